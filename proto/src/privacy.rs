//! What is left of personal data after a user's erasure, shared by the
//! services that keep records the shop must retain (orders, shipments).

use crate::common::v1::Address;

/// `address` without what identifies the person: only the country stays,
/// which an order's taxes and a shipment's statistics need.
pub fn anonymised_address(address: &Address) -> Address {
    Address { country_code: address.country_code.clone(), ..Address::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anonymised_address_keeps_the_country_alone() {
        let full = Address {
            recipient_name: "Ada Lovelace".to_owned(),
            line1: "1 Main Street".to_owned(),
            line2: "Flat 2".to_owned(),
            city: "London".to_owned(),
            region: "Greater London".to_owned(),
            postal_code: "N1 1AA".to_owned(),
            country_code: "GB".to_owned(),
            phone: "+442071234567".to_owned(),
        };
        assert_eq!(
            anonymised_address(&full),
            Address { country_code: "GB".to_owned(), ..Address::default() }
        );
    }
}
