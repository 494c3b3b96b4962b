//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`), read exactly as
//! the apiserver reads them: `validate` compares a service's requests with
//! its limits before anything is applied, and the apply step's drift check
//! sees that `0.5` and the apiserver's rewrite `500m` are the same value.
//!
//! The grammar is the apiserver's (`resource.Quantity`): an optional sign, a
//! decimal number (`1`, `1.5`, `1.`, `.5`), then at most one suffix: binary
//! (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`), decimal SI (`n`, `u`, `m`, `k`, `M`,
//! `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). The value is
//! kept in whole nano-units with integer arithmetic, never a float: a finer
//! fraction rounds up, and a magnitude above 2^63-1 is capped, as the
//! apiserver does.

/// Nano-units per unit: the finest precision the apiserver keeps.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// The largest magnitude the apiserver stores, 2^63-1 units, in nano-units.
const CAP: i128 = i64::MAX as i128 * NANOS_PER_UNIT;
/// Decimal exponents beyond this make any non-zero mantissa exceed [`CAP`]
/// or fall below one nano-unit; clamping keeps the arithmetic small.
const MAX_EXPONENT: i32 = 100;

/// The value of a quantity, comparable with another whatever the notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: i128,
}

impl Quantity {
    /// Whether the value is below zero (the apiserver refuses negative
    /// requests and limits).
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }
}

/// The quantity `text` stands for, or `None` if it is not one. Whitespace
/// around it is ignored, as in the apiserver's JSON decoding.
pub fn parse(text: &str) -> Option<Quantity> {
    let text = text.trim();
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = unsigned.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let (exponent, binary_shift) = suffix_scale(suffix)?;
    let magnitude = nanos(whole, fraction, exponent, binary_shift);
    Some(Quantity { nanos: if negative { -magnitude } else { magnitude } })
}

/// The power of ten and the power of two a suffix multiplies by.
fn suffix_scale(suffix: &str) -> Option<(i32, u32)> {
    let scale = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        _ => (decimal_exponent(suffix)?, 0),
    };
    Some(scale)
}

/// `e<integer>` or `E<integer>`, the integer optionally signed; clamped to
/// [`MAX_EXPONENT`].
fn decimal_exponent(suffix: &str) -> Option<i32> {
    let rest = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match rest.as_bytes().first()? {
        b'-' => (true, &rest[1..]),
        b'+' => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = digits.parse::<i32>().unwrap_or(MAX_EXPONENT).min(MAX_EXPONENT);
    Some(if negative { -value } else { value })
}

/// `whole.fraction × 10^exponent × 2^binary_shift` in nano-units, rounded
/// up and capped at [`CAP`].
fn nanos(whole: &str, fraction: &str, exponent: i32, binary_shift: u32) -> i128 {
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let mantissa_digits = significant.trim_end_matches('0');
    if mantissa_digits.is_empty() {
        return 0;
    }
    let trailing_zeros = significant.len() - mantissa_digits.len();
    let fraction_len = i32::try_from(fraction.len()).unwrap_or(i32::MAX);
    let trailing_zeros = i32::try_from(trailing_zeros).unwrap_or(i32::MAX);
    // `digits` has `fraction_len` decimals; nano-units add nine.
    let power = exponent.saturating_sub(fraction_len).saturating_add(trailing_zeros).saturating_add(9);
    let Some(scaled) =
        mantissa_digits.parse::<i128>().ok().and_then(|m| m.checked_mul(1i128 << binary_shift))
    else {
        return CAP;
    };
    let value = if power >= 0 {
        10i128.checked_pow(power.unsigned_abs()).and_then(|factor| scaled.checked_mul(factor)).unwrap_or(CAP)
    } else {
        match 10i128.checked_pow(power.unsigned_abs()) {
            Some(divisor) => scaled / divisor + i128::from(scaled % divisor != 0),
            // Less than one nano-unit, and more than zero.
            None => 1,
        }
    };
    value.min(CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Quantity {
        parse(text).unwrap_or_else(|| panic!("{text:?} is a quantity"))
    }

    #[test]
    fn every_notation_of_the_same_value_is_equal() {
        for (a, b) in [
            ("500m", "0.5"),
            ("0.5", ".5"),
            ("1", "1."),
            ("1Ki", "1024"),
            ("1Gi", "1024Mi"),
            ("1.5Gi", "1536Mi"),
            ("1k", "1000"),
            ("1M", "1e6"),
            ("1G", "1E9"),
            ("2e3", "2k"),
            ("1e-3", "1m"),
            ("1000n", "1u"),
            ("+1", "1"),
            ("-0", "0"),
            (" 250m ", "0.25"),
            ("0001.5000", "1500m"),
            ("1E", "1e18"),
        ] {
            assert_eq!(value(a), value(b), "{a} = {b}");
        }
    }

    #[test]
    fn values_compare_across_decimal_and_binary_suffixes() {
        assert!(value("1G") < value("1Gi"));
        assert!(value("1.1G") > value("1Gi"));
        assert!(value("2") > value("500m"));
        assert!(value("1m") < value("2e-3"));
        assert!(value("-1") < value("0"));
        assert!(value("-1Mi").is_negative() && !value("0").is_negative());
    }

    #[test]
    fn text_outside_the_grammar_is_not_a_quantity() {
        for text in [
            "", " ", "-", "+", ".", "Mi", "m", "1.5.0", "1e", "1e+", "1e1.5", "1.5e3Mi", "2 cores", "1KB",
            "1mi", "0x10", "1_000", "--1", "redis",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_fraction_below_a_nano_unit_rounds_up_and_a_huge_value_is_capped() {
        assert_eq!(value("0.1n"), value("1n"));
        assert_eq!(value("1e-30"), value("1n"));
        assert_eq!(value("1e-1000000000000"), value("1n"));
        assert_eq!(value("1e30"), value("1e40"));
        assert_eq!(value(&"9".repeat(60)), value("1e40"));
        // Many digits, but a small value.
        assert_eq!(value(&format!("1{}e-50", "0".repeat(53))), value("1k"));
        assert_eq!(value(&format!("0.{}1", "0".repeat(50))), value("1n"));
    }
}
