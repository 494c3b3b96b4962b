//! The rules of profiles and address books, pure.

/// Most addresses one user keeps.
pub const MAX_ADDRESSES: i64 = 20;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Longest label or address line, in characters.
pub const MAX_TEXT: usize = 200;

/// A field that breaks a rule; the gRPC answer names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

fn invalid(field: &'static str, problem: &'static str) -> Result<(), Invalid> {
    Err(Invalid { field, problem })
}

/// The editable fields of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileFields {
    pub display_name: String,
    pub phone: String,
    pub currency: String,
    pub marketing_consent: bool,
}

/// A postal address, as the common proto has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostalAddress {
    pub recipient_name: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
    pub phone: String,
}

/// `+` and 7 to 15 digits, the first not 0 (E.164).
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else { return false };
    (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

fn blank(text: &str) -> bool {
    text.trim().is_empty()
}

fn too_long(text: &str, max: usize) -> bool {
    text.chars().count() > max
}

/// Checks a profile's fields.
pub fn check_profile(fields: &ProfileFields) -> Result<(), Invalid> {
    if blank(&fields.display_name) {
        return invalid("display_name", "must not be blank");
    }
    if too_long(&fields.display_name, MAX_DISPLAY_NAME) {
        return invalid("display_name", "must be at most 100 characters");
    }
    if !fields.phone.is_empty() && !is_e164(&fields.phone) {
        return invalid("phone", "must be E.164: + and 7 to 15 digits, or empty");
    }
    let iso_4217 = fields.currency.len() == 3 && fields.currency.bytes().all(|b| b.is_ascii_uppercase());
    if !fields.currency.is_empty() && !iso_4217 {
        return invalid("preferences.currency", "must be an ISO 4217 code such as EUR, or empty");
    }
    Ok(())
}

/// Checks a label.
pub fn check_label(label: &str) -> Result<(), Invalid> {
    if too_long(label, MAX_TEXT) {
        return invalid("label", "must be at most 200 characters");
    }
    Ok(())
}

/// Checks an address.
pub fn check_address(address: &PostalAddress) -> Result<(), Invalid> {
    let required = [
        ("address.recipient_name", &address.recipient_name),
        ("address.line1", &address.line1),
        ("address.city", &address.city),
        ("address.postal_code", &address.postal_code),
    ];
    for (field, value) in required {
        if blank(value) {
            return invalid(field, "must not be blank");
        }
    }
    let lengths = [
        ("address.recipient_name", &address.recipient_name, MAX_TEXT),
        ("address.line1", &address.line1, MAX_TEXT),
        ("address.line2", &address.line2, MAX_TEXT),
        ("address.city", &address.city, MAX_TEXT),
        ("address.region", &address.region, MAX_TEXT),
        ("address.postal_code", &address.postal_code, 20),
    ];
    for (field, value, max) in lengths {
        if too_long(value, max) {
            return invalid(field, "is too long");
        }
    }
    if !(address.country_code.len() == 2 && address.country_code.bytes().all(|b| b.is_ascii_uppercase())) {
        return invalid("address.country_code", "must be ISO 3166-1 alpha-2, upper case, such as DE");
    }
    if !address.phone.is_empty() && !is_e164(&address.phone) {
        return invalid("address.phone", "must be E.164: + and 7 to 15 digits, or empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> PostalAddress {
        PostalAddress {
            recipient_name: "Ada".to_owned(),
            line1: "1 Main St".to_owned(),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country_code: "DE".to_owned(),
            ..PostalAddress::default()
        }
    }

    #[test]
    fn phones_are_e164() {
        assert!(is_e164("+4930123456"));
        for bad in ["4930123456", "+0301234567", "+49", "+49 30 123", "+1234567890123456"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn a_profile_needs_a_name_and_well_formed_phone_and_currency() {
        let ok = ProfileFields { display_name: "Ada".to_owned(), ..ProfileFields::default() };
        assert_eq!(check_profile(&ok), Ok(()));
        let cases = [
            (ProfileFields { display_name: " ".to_owned(), ..ok.clone() }, "display_name"),
            (ProfileFields { display_name: "x".repeat(101), ..ok.clone() }, "display_name"),
            (ProfileFields { phone: "0301234".to_owned(), ..ok.clone() }, "phone"),
            (ProfileFields { currency: "eur".to_owned(), ..ok }, "preferences.currency"),
        ];
        for (fields, field) in cases {
            assert_eq!(check_profile(&fields).map_err(|e| e.field), Err(field), "{fields:?}");
        }
    }

    #[test]
    fn an_address_needs_its_lines_and_a_country_code() {
        assert_eq!(check_address(&address()), Ok(()));
        let cases = [
            (PostalAddress { line1: String::new(), ..address() }, "address.line1"),
            (PostalAddress { country_code: "de".to_owned(), ..address() }, "address.country_code"),
            (PostalAddress { postal_code: "1".repeat(21), ..address() }, "address.postal_code"),
            (PostalAddress { phone: "12".to_owned(), ..address() }, "address.phone"),
        ];
        for (bad, field) in cases {
            assert_eq!(check_address(&bad).map_err(|e| e.field), Err(field), "{bad:?}");
        }
    }
}
