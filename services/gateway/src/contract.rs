//! The request rules of the REST API, stated once.
//!
//! Every rule a request must satisfy (lengths, ranges, patterns, required
//! fields, unknown fields, which fields go together) is written as a
//! `#[schemars(...)]` attribute on the request DTO. The same derived JSON
//! Schema is published in the OpenAPI document ([`crate::openapi`]) and,
//! compiled with the `jsonschema` crate, is what the extractors
//! ([`crate::extract`]) check each body and query against before serde reads
//! it. So the document and the handlers cannot disagree about what is valid:
//! there is nothing else to disagree with. (A hand-written `validate()` per
//! DTO, the earlier design, drifted from the document within weeks; a
//! validation crate with its own attributes, such as garde, would still be a
//! second statement of the rules beside the schema.)
//!
//! What a schema cannot know (whether a product exists, whether a shipment
//! may move to a status now) is for the services to answer, with 404, 409 or
//! 422.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::problem::{FieldError, Problem};

/// A string with at least one character that is not white space (and, as
/// every string, no NUL: see [`NoNul`]).
/// U+0085 is white space to Rust (`str::trim`, which the services use)
/// but not to ECMA-262's `\s`, so it is named.
pub const NON_BLANK: &str = r"^[^\x00]*[^\s\x00\x85][^\x00]*$";
/// Any string without NUL, for strings with no other pattern.
pub const NO_NUL: &str = r"^[^\x00]*$";
/// A path pattern of a rate-limit rule.
pub const RULE_PATH: &str = r"^/[^\x00]*$";
/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";
/// An ISO 4217 alphabetic currency code.
pub const CURRENCY: &str = "^[A-Z]{3}$";
/// An ISO 3166-1 alpha-2 country code.
pub const COUNTRY: &str = "^[A-Z]{2}$";
/// An E.164 phone number ("+4930123456"), or nothing.
pub const PHONE_OR_EMPTY: &str = r"^(\+[1-9][0-9]{6,14})?$";
/// An ISO 4217 currency code, or nothing.
pub const CURRENCY_OR_EMPTY: &str = "^([A-Z]{3})?$";
/// A category slug: lower-case letters and digits in words joined by
/// single dashes (`kitchen-knives`).
pub const SLUG: &str = "^[a-z0-9]+(-[a-z0-9]+)*$";
/// A product's stock-keeping unit.
pub const SKU: &str = "^[A-Za-z0-9._-]+$";
/// A rate-limit rule name.
pub const RULE_NAME: &str = "^[A-Za-z0-9_-]+$";
/// An email address as the auth service accepts one: no white space, one
/// `@`, and a dotted domain that neither starts nor ends with a dot.
/// Control characters are refused too.
pub const EMAIL: &str =
    r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s.\x00-\x1f\x7f-\x9f]+(\.[^@\s.\x00-\x1f\x7f-\x9f]+)+$";

/// Where the checked value came from, for the pointers of the errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The JSON body: errors point into it (`/lines/0/quantity`).
    Body,
    /// The query string: errors name the parameter (`query:page_size`).
    Query,
}

/// The schema settings of every request and response type: JSON Schema
/// 2020-12 (what OpenAPI 3.1 uses) with [`NoNul`] applied.
pub fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with_transform(NoNul)
}

/// The JSON Schema of `T` as a root document (its definitions under
/// `$defs`): the schema the OpenAPI document shows for `T`.
pub fn root_schema<T: JsonSchema>() -> Value {
    settings().into_generator().into_root_schema_for::<T>().to_value()
}

/// Gives every free-text string schema a pattern that refuses NUL (U+0000):
/// Postgres cannot store it in text, and no field of this API needs it. The
/// hand-written patterns above exclude it themselves; strings with a
/// `format`, an `enum` or a `const` are already narrower.
#[derive(Debug, Clone, Copy)]
pub struct NoNul;

impl Transform for NoNul {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let is_string = match schema.get("type") {
            Some(Value::String(kind)) => kind == "string",
            Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "string"),
            _ => false,
        };
        let narrower =
            ["pattern", "format", "enum", "const"].into_iter().any(|key| schema.get(key).is_some());
        if is_string && !narrower {
            schema.insert("pattern".to_owned(), NO_NUL.into());
        }
    }
}

type Validators = RwLock<HashMap<TypeId, Arc<Validator>>>;

/// `T`'s compiled schema, built on first use.
fn validator<T: JsonSchema + 'static>() -> Arc<Validator> {
    static VALIDATORS: LazyLock<Validators> = LazyLock::new(Validators::default);
    let id = TypeId::of::<T>();
    if let Some(validator) = VALIDATORS.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
        return Arc::clone(validator);
    }
    let validator = Arc::new(compile(&root_schema::<T>()).unwrap_or_else(|error| {
        // The schemas are derived from this build's types: a schema that
        // does not compile is a programming error every test would hit.
        panic!("the JSON Schema of {} does not compile: {error}", std::any::type_name::<T>())
    }));
    VALIDATORS.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, Arc::clone(&validator));
    validator
}

/// Compiles a schema with format assertions on (`uuid`, `date-time`).
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options().should_validate_formats(true).build(schema).map_err(|error| error.to_string())
}

/// Checks `value` against `T`'s schema; the problem names every violation.
pub fn check<T: JsonSchema + 'static>(value: &Value, part: Part) -> Result<(), Problem> {
    let errors = violations(&validator::<T>(), value, part);
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation(errors)) }
}

/// Every violation of `validator` by `value`, located and worded for the
/// client. Values are never echoed back (a password is a string too).
pub fn violations(validator: &Validator, value: &Value, part: Part) -> Vec<FieldError> {
    let locate = |path: &str| match part {
        Part::Body if path.is_empty() => "/".to_owned(),
        Part::Body => path.to_owned(),
        Part::Query if path.is_empty() => "query".to_owned(),
        Part::Query => format!("query:{}", path.trim_start_matches('/')),
    };
    // A member of the object at `path`, named as a JSON pointer segment.
    let member = |path: &str, name: &str| format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
    let mut errors = Vec::new();
    for error in validator.iter_errors(value) {
        let path = error.instance_path().as_str();
        // Unknown and missing members are named where they are (or belong),
        // not at the object that holds them.
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    errors.push(FieldError::new(locate(&member(path, name)), "unknown field"));
                }
            }
            ValidationErrorKind::Required { property: Value::String(name) } => {
                errors.push(FieldError::new(locate(&member(path, name)), "is required"));
            }
            _ => errors.push(FieldError::new(locate(path), message(&error))),
        }
    }
    errors.dedup();
    errors
}

fn message(error: &jsonschema::ValidationError<'_>) -> String {
    match error.kind() {
        ValidationErrorKind::Pattern { pattern } if pattern == NON_BLANK => {
            "must not be blank (nor hold NUL)".to_owned()
        }
        ValidationErrorKind::Pattern { pattern } if pattern == NO_NUL => {
            "must not hold NUL (U+0000)".to_owned()
        }
        ValidationErrorKind::Pattern { pattern } if pattern == CURRENCY => {
            "must be an ISO 4217 code such as EUR".to_owned()
        }
        ValidationErrorKind::Pattern { pattern } if pattern == COUNTRY => {
            "must be an ISO 3166-1 alpha-2 code such as DE".to_owned()
        }
        ValidationErrorKind::Pattern { pattern } if pattern == EMAIL => {
            "must be an email address (name@domain.tld)".to_owned()
        }
        _ => error.masked().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dto::{
        AddItemRequest, PlaceOrderRequest, ProductQuery, RegisterRequest, UpdateProductRequest,
    };

    fn pointers<T: JsonSchema + 'static>(value: Value, part: Part) -> Vec<String> {
        match check::<T>(&value, part) {
            Ok(()) => Vec::new(),
            Err(problem) => problem.errors.iter().map(|error| error.pointer.clone()).collect(),
        }
    }

    #[test]
    fn an_order_with_a_negative_and_a_zero_quantity_names_both_lines() {
        let body = json!({
            "lines": [
                {"product_id": uuid::Uuid::nil(), "quantity": -1},
                {"product_id": uuid::Uuid::nil(), "quantity": 0},
                {"product_id": uuid::Uuid::nil(), "quantity": 2}
            ],
            "shipping_address": {"recipient_name": "A", "line1": "B 1", "city": "C", "postal_code": "1", "country_code": "DE"},
            "payment_method_token": "tok"
        });
        assert_eq!(
            pointers::<PlaceOrderRequest>(body, Part::Body),
            ["/lines/0/quantity", "/lines/1/quantity"]
        );
    }

    #[test]
    fn blank_strings_unknown_fields_and_bad_codes_are_named() {
        let body = json!({"email": "ada@example.com", "password": "        ", "nickname": "x"});
        let problem = check::<RegisterRequest>(&body, Part::Body).expect_err("invalid");
        let found: Vec<(&str, &str)> =
            problem.errors.iter().map(|error| (error.pointer.as_str(), error.detail.as_str())).collect();
        assert!(found.contains(&("/password", "must not be blank (nor hold NUL)")), "{found:?}");
        assert!(found.contains(&("/nickname", "unknown field")), "{found:?}");
        let missing = check::<RegisterRequest>(&json!({"password": "long enough"}), Part::Body);
        let missing = missing.expect_err("no email").errors.clone();
        assert_eq!(missing, [FieldError::new("/email", "is required")]);
        assert!(!problem.detail.contains("        "), "the value is not echoed: {}", problem.detail);
        let query = json!({"page_size": 0, "currency": "eur"});
        assert_eq!(pointers::<ProductQuery>(query, Part::Query), ["query:currency", "query:page_size"]);
    }

    #[test]
    fn an_empty_patch_and_an_oversized_quantity_are_refused_and_a_valid_one_passes() {
        assert_eq!(pointers::<UpdateProductRequest>(json!({}), Part::Body), ["/"]);
        assert!(pointers::<UpdateProductRequest>(json!({"active": false}), Part::Body).is_empty());
        let too_many = json!({"product_id": uuid::Uuid::nil(), "quantity": crate::dto::MAX_QUANTITY + 1});
        assert_eq!(pointers::<AddItemRequest>(too_many, Part::Body), ["/quantity"]);
        let fine = json!({"product_id": uuid::Uuid::nil(), "quantity": 3});
        assert!(pointers::<AddItemRequest>(fine, Part::Body).is_empty());
    }

    #[test]
    fn free_text_refuses_nul_and_the_document_says_so() {
        let body = json!({"email": "ada@example.com", "password": "long enough", "display_name": "A\u{0}"});
        assert_eq!(pointers::<RegisterRequest>(body, Part::Body), ["/display_name"]);
        let schema = root_schema::<RegisterRequest>();
        assert_eq!(schema["properties"]["display_name"]["pattern"], NO_NUL, "{schema}");
    }

    #[test]
    fn the_email_pattern_matches_what_the_auth_service_accepts() {
        let pattern = matches_email;
        for good in ["ada@example.com", "a.b+c@sub.example.org", "x@y.z"] {
            assert!(pattern(good), "{good}");
            assert!(commerce_auth::domain::normalize_email(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@.example.com",
            "ada@example.com.",
            "a da@example.com",
            "a\u{0}@example.com",
            "a@b\u{85}c.com",
        ] {
            assert!(!pattern(bad), "{bad}");
        }
    }

    /// Matches against [`EMAIL`] through the same validator the gateway uses.
    fn matches_email(candidate: &str) -> bool {
        let validator = compile(&json!({"type": "string", "pattern": EMAIL})).expect("compiles");
        validator.is_valid(&json!(candidate))
    }
}
