//! Request extractors that turn every kind of bad input into a 4xx problem
//! naming the field: wrong content type (415), oversized body (413),
//! malformed JSON, unknown or mistyped fields, values that break a rule
//! (400), and malformed query strings, path ids and headers.
//!
//! axum's own `Json`/`Query` rejections are plain text and only say the
//! first failure in prose. These check the value against the request type's
//! JSON Schema first ([`contract::check`]: every violation, each named by a
//! JSON pointer or `query:` parameter), the very schema the OpenAPI document
//! publishes, then read it with serde (`serde_path_to_error` names the field
//! should serde still refuse it).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::contract::{self, Part};
use crate::problem::Problem;

/// A JSON body of type `T`, parsed strictly and validated.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + JsonSchema + 'static,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(request.headers())?;
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                body_too_large()
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "unreadable-body", rejection.body_text())
            }
        })?;
        parse_json::<T>(&body).map(Self)
    }
}

/// An optional JSON body: an empty body is `None`, anything else must be a
/// valid `T` (cancellation takes an optional reason).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + JsonSchema + 'static,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = request.headers();
        let declared_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        // A body is there when one is announced: a type, a non-zero length,
        // or chunked transfer. It must then be valid JSON like any other.
        let has_body = headers.contains_key(header::CONTENT_TYPE)
            || headers.contains_key(header::TRANSFER_ENCODING)
            || declared_length.is_some_and(|length| length > 0);
        if !has_body {
            return Ok(Self(None));
        }
        let ApiJson(value) = ApiJson::<T>::from_request(request, state).await?;
        Ok(Self(Some(value)))
    }
}

/// The 413 problem, also returned by the early Content-Length check.
pub fn body_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "the request body is larger than this API accepts",
    )
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(());
    }
    let detail = if content_type.is_empty() {
        "the request has a body but no Content-Type; send application/json".to_owned()
    } else {
        format!("Content-Type {content_type:?} is not supported; send application/json")
    };
    Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", detail).with_header(
        header::HeaderName::from_static("accept-post"),
        header::HeaderValue::from_static("application/json"),
    ))
}

/// Parses `body` as JSON, checks it against `T`'s schema and reads it as
/// `T`, naming every failing field on error.
pub fn parse_json<T: DeserializeOwned + JsonSchema + 'static>(body: &[u8]) -> Result<T, Problem> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    contract::check::<T>(&value, Part::Body)?;
    serde_path_to_error::deserialize(integral_floats_as_integers(value)).map_err(|error| {
        let pointer = json_pointer(error.path());
        Problem::invalid_field(pointer, strip_position(&error.into_inner().to_string()))
    })
}

/// JSON Schema counts `2.0` as an integer (a number with no fraction); serde
/// reads it into no integer type. So integral numbers become integers before
/// serde reads the value (no request field is a float).
fn integral_floats_as_integers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            let integral = number.as_f64().filter(|float| float.fract() == 0.0);
            // In range of i64: the float converts exactly.
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let integer = integral
                .filter(|float| (i64::MIN as f64..i64::MAX as f64).contains(float))
                .map(|float| float as i64);
            integer.map_or(Value::Number(number), Value::from)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integral_floats_as_integers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter().map(|(key, value)| (key, integral_floats_as_integers(value))).collect(),
        ),
        other => other,
    }
}

/// A query string of type `T`, parsed strictly and validated.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Serialize + JsonSchema + 'static,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer = serde_urlencoded_deserializer(query);
        let value: T = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let detail = error.into_inner().to_string();
            let pointer =
                if path == "." || path.is_empty() { "query".to_owned() } else { format!("query:{path}") };
            Problem::invalid_field(pointer, detail)
        })?;
        // The parameters as their typed JSON values, checked against the
        // schema the document shows for them.
        let json = serde_json::to_value(&value).map_err(|error| {
            Problem::new(StatusCode::BAD_REQUEST, "validation", format!("unreadable query: {error}"))
        })?;
        contract::check::<T>(&json, Part::Query)?;
        Ok(Self(value))
    }
}

fn serde_urlencoded_deserializer(
    query: &str,
) -> serde::de::value::MapDeserializer<
    'static,
    std::vec::IntoIter<(String, QueryValue)>,
    serde::de::value::Error,
> {
    let pairs: Vec<(String, QueryValue)> =
        url_pairs(query).into_iter().map(|(name, value)| (name, QueryValue(value))).collect();
    serde::de::value::MapDeserializer::new(pairs.into_iter())
}

/// One query value: a string that numbers and booleans are parsed from.
struct QueryValue(String);

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for QueryValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse_query_value {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                let parsed: $ty = self.0.trim().parse().map_err(|_| {
                    <Self::Error as serde::de::Error>::custom(format!("{:?} is not a valid {}", self.0, stringify!($ty)))
                })?;
                visitor.$visit(parsed)
            }
        )*
    };
}

impl<'de> serde::de::Deserializer<'de> for QueryValue {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_string(self.0)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer;
        visitor.visit_enum(self.0.into_deserializer())
    }

    parse_query_value! {
        deserialize_bool => visit_bool: bool,
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_f32 => visit_f32: f32,
        deserialize_f64 => visit_f64: f64,
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// Splits and percent-decodes `a=1&b=two` (`+` is a space, as in forms).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(byte) => {
                    out.push(byte);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a path segment as a UUID, naming it on failure.
pub fn path_uuid(name: &str, value: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value).map_err(|_| Problem::invalid_field(format!("path:{name}"), "must be a UUID"))
}

/// The `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header),
/// required where a retried request must not act twice: 1 to 255 visible
/// ASCII characters ([`contract::IDEMPOTENCY_KEY`], as documented).
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    static SCHEMA: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        let schema = serde_json::json!({"type": "string", "pattern": contract::IDEMPOTENCY_KEY});
        contract::compile(&schema).unwrap_or_else(|error| panic!("idempotency key schema: {error}"))
    });
    let pointer = "header:Idempotency-Key";
    let value = headers.get("idempotency-key").ok_or_else(|| {
        Problem::invalid_field(pointer, "required: a unique client-chosen key per operation")
    })?;
    let key = value.to_str().ok().filter(|key| SCHEMA.is_valid(&serde_json::Value::from(*key)));
    key.map(str::to_owned)
        .ok_or_else(|| Problem::invalid_field(pointer, "must be 1 to 255 visible ASCII characters"))
}

/// `serde_path_to_error` paths (`lines[0].quantity`) as JSON pointers
/// (`/lines/0/quantity`).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    if pointer.is_empty() { "/".to_owned() } else { pointer }
}

/// serde_json appends " at line 1 column 42" to data errors; the pointer
/// says where, better.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::problem::FieldError;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Line {
        #[allow(dead_code)]
        quantity: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        lines: Vec<Line>,
    }

    #[test]
    fn a_mistyped_nested_field_is_named_by_json_pointer() {
        let problem =
            parse_json::<Body>(br#"{"lines":[{"quantity":1},{"quantity":-2}]}"#).expect_err("invalid");
        assert_eq!(problem.status, 400);
        assert_eq!(problem.errors[0].pointer, "/lines/1/quantity");
        assert!(!problem.errors[0].detail.contains("line 1"), "{}", problem.errors[0].detail);
    }

    #[test]
    fn malformed_json_and_unknown_fields_are_distinct_problems() {
        let problem = parse_json::<Body>(b"{\"lines\":").expect_err("malformed");
        assert!(problem.kind.ends_with("malformed-json"));
        let problem = parse_json::<Body>(br#"{"lines":[],"price":1}"#).expect_err("unknown field");
        assert!(problem.kind.ends_with("validation"));
        assert_eq!(problem.errors, [FieldError::new("/price", "unknown field")]);
    }

    #[test]
    fn an_empty_id_parameter_reads_as_absent_and_a_bad_one_is_refused() {
        let read = |query: &str| -> Result<crate::dto::ShipmentQuery, String> {
            serde_path_to_error::deserialize(serde_urlencoded_deserializer(query)).map_err(|e| e.to_string())
        };
        assert_eq!(read("order_id=").expect("empty is absent").order_id, None);
        let id = uuid::Uuid::now_v7();
        assert_eq!(read(&format!("order_id={id}")).expect("an id").order_id, Some(id));
        assert!(read("order_id=mug").is_err());
    }

    #[test]
    fn query_strings_are_percent_decoded() {
        assert_eq!(
            url_pairs("q=red+shoes%21&page_size=5&flag"),
            [("q".into(), "red shoes!".into()), ("page_size".into(), "5".into()), ("flag".into(), "".into())]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
