//! Reading event payloads the service has no Rust type for: by their type
//! name in the shop's descriptor set, so that a new event is recorded,
//! shown and searched by actor without a change here.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};

/// Fields that name who acted, in the order they are looked for. An event
/// that names none of them is one of the shop's own steps.
const ACTOR_FIELDS: &[&str] =
    &["changed_by", "cancelled_by", "actor_id", "requested_by", "moderator_id", "reporter_id"];

static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(commerce_proto::FILE_DESCRIPTOR_SET)
        .inspect_err(|error| tracing::error!(%error, "the built-in descriptor set does not decode"))
        .ok()
});

/// A payload decoded by its CloudEvents type.
#[derive(Debug)]
pub struct Payload(Option<DynamicMessage>);

impl Payload {
    /// Decodes `bytes` as `event_type` (a full message name). A type the
    /// descriptor set does not know, or bytes that do not decode, give a
    /// payload that renders as its raw bytes: the entry is recorded anyway.
    pub fn decode(event_type: &str, bytes: &[u8]) -> Self {
        let message = POOL
            .as_ref()
            .and_then(|pool| pool.get_message_by_name(event_type))
            .and_then(|descriptor| DynamicMessage::decode(descriptor, bytes).ok());
        Self(message)
    }

    /// Who acted, when the event names someone; empty otherwise.
    pub fn actor(&self) -> String {
        let Some(message) = &self.0 else { return String::new() };
        ACTOR_FIELDS
            .iter()
            .filter_map(|name| message.get_field_by_name(name))
            .find_map(|value| match value.as_ref() {
                Value::String(text) if !text.is_empty() => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The payload in the protobuf JSON mapping with the proto field names
    /// (snake_case, like the REST API); `{"undecoded_base64": ...}` for a
    /// payload of an unknown type.
    pub fn to_json(&self, bytes: &[u8]) -> String {
        let rendered = self.0.as_ref().and_then(|message| {
            let mut out = serde_json::Serializer::new(Vec::new());
            let options = SerializeOptions::new().use_proto_field_name(true);
            message.serialize_with_options(&mut out, &options).ok()?;
            String::from_utf8(out.into_inner()).ok()
        });
        rendered.unwrap_or_else(|| {
            use base64::Engine as _;
            serde_json::json!({ "undecoded_base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use commerce_proto::events::v1 as ev;
    use prost::Message as _;

    use super::*;

    #[test]
    fn the_administrator_of_a_role_change_is_its_actor_and_the_json_uses_proto_names() {
        let event = ev::UserRoleChanged {
            user_id: "user-1".into(),
            previous_role: ev::UserRole::Customer.into(),
            role: ev::UserRole::Admin.into(),
            changed_by: "admin-7".into(),
            occurred_at: None,
        };
        let bytes = event.encode_to_vec();
        let payload = Payload::decode("commerce.events.v1.UserRoleChanged", &bytes);
        assert_eq!(payload.actor(), "admin-7");
        let json: serde_json::Value = serde_json::from_str(&payload.to_json(&bytes)).unwrap();
        assert_eq!(json["user_id"], "user-1");
        assert_eq!(json["changed_by"], "admin-7");
        assert_eq!(json["role"], "USER_ROLE_ADMIN");
    }

    #[test]
    fn an_event_naming_nobody_has_no_actor() {
        let event = ev::UserRegistered { user_id: "user-1".into(), ..Default::default() };
        let bytes = event.encode_to_vec();
        assert_eq!(Payload::decode("commerce.events.v1.UserRegistered", &bytes).actor(), "");
    }

    #[test]
    fn an_unknown_type_is_kept_as_its_bytes() {
        let payload = Payload::decode("commerce.events.v9.Unheard", &[1, 2, 3]);
        assert_eq!(payload.actor(), "");
        let json: serde_json::Value = serde_json::from_str(&payload.to_json(&[1, 2, 3])).unwrap();
        assert_eq!(json["undecoded_base64"], "AQID");
    }
}
