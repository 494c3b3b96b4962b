//! The `render` subcommand: the objects a stack becomes, as YAML, without a
//! cluster. It runs the same `validate` and `build` as the reconciler;
//! generated Secret values show as placeholders, and the objects carry no
//! ownerReferences (the stack has no uid before it is applied).

use commerce_api::{CommerceStack, RateLimitPolicy};
use serde::Deserialize;

use crate::Error;
use crate::build::{self, secrets::SecretValues};
use crate::validate::validate;

/// Renders every CommerceStack in `yaml` (a multi-document stream that may
/// also hold RateLimitPolicies, which join the stacks they target).
/// `namespace` stands in for resources that name none.
pub fn render(yaml: &str, namespace: &str) -> Result<String, Error> {
    let mut stacks: Vec<CommerceStack> = Vec::new();
    let mut policies: Vec<RateLimitPolicy> = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|source| Error::ParseYaml { what: "a YAML document".into(), source })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
        match kind.as_str() {
            "CommerceStack" => stacks.push(
                serde_yaml_ng::from_value(value).map_err(|source| Error::ParseYaml { what: kind, source })?,
            ),
            "RateLimitPolicy" => policies.push(
                serde_yaml_ng::from_value(value).map_err(|source| Error::ParseYaml { what: kind, source })?,
            ),
            _ => return Err(Error::UnexpectedKind { kind }),
        }
    }
    if stacks.is_empty() {
        return Err(Error::UnexpectedKind { kind: "none (the input holds no CommerceStack)".into() });
    }
    for policy in &mut policies {
        policy.metadata.namespace.get_or_insert_with(|| namespace.to_owned());
    }
    let mut out = String::new();
    for stack in &stacks {
        let valid = validate(stack, namespace)?;
        let objects = build::build(&valid, &policies, &SecretValues::placeholders())?;
        out.push_str(&build::to_yaml(&objects)?);
    }
    Ok(out)
}
