//! Whether an object in the cluster already is what `build` wants, so that a
//! reconcile with nothing to change sends no write at all.
//!
//! Server-side apply would accept the same object again and change nothing,
//! but it would still be a request per object per reconcile. Instead the
//! applied object carries a hash of what was applied (set by `build`), and
//! an object is skipped when the hash matches *and* every field `build` sets
//! still holds its value. The hash catches fields `build` stopped setting
//! (which apply then removes); the field check catches drift (someone edited
//! or scaled the object), which apply then corrects.

use serde_json::Value;

use crate::quantity;

/// Whether every field of `want` has the same value in `have`. Fields only
/// `have` holds (defaults the apiserver filled in, fields of other managers)
/// do not matter. Lists of named objects (containers, env, ports) match by
/// name; other lists element by element. Quantities match by value, since
/// the apiserver rewrites them in canonical form (`0.5` becomes `500m`).
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Null, _) => true,
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| match have.get(key) {
            Some(current) => is_subset(value, current),
            None => value.is_null() || is_empty_collection(value),
        }),
        (Value::Array(want), Value::Array(have)) => {
            if want.iter().all(|item| item.get("name").and_then(Value::as_str).is_some()) && !want.is_empty()
            {
                want.iter().all(|item| {
                    let name = item.get("name");
                    have.iter().any(|current| current.get("name") == name && is_subset(item, current))
                })
            } else {
                want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
            }
        }
        (Value::String(want), Value::String(have)) => {
            want == have
                || matches!((quantity::parse(want), quantity::parse(have)), (Some(a), Some(b)) if a == b)
        }
        (Value::Number(want), Value::Number(have)) => want.as_f64() == have.as_f64(),
        (want, have) => want == have,
    }
}

/// The apiserver drops empty maps and lists it was sent.
fn is_empty_collection(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_the_apiserver_adds_do_not_count_as_a_difference() {
        let want = json!({"spec": {"ports": [{"name": "grpc", "port": 50051}]}});
        let have = json!({"spec": {"ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}], "clusterIP": "10.0.0.1"}});
        assert!(is_subset(&want, &have));
    }

    #[test]
    fn a_changed_value_counts_as_a_difference() {
        let want = json!({"spec": {"replicas": 2}});
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 3}})));
        assert!(!is_subset(&want, &json!({"spec": {}})));
    }

    #[test]
    fn named_list_items_match_by_name_whatever_their_order() {
        let want = json!([{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]);
        let have = json!([{"name": "b", "value": "2"}, {"name": "a", "value": "1"}]);
        assert!(is_subset(&want, &have));
        assert!(!is_subset(&want, &json!([{"name": "a", "value": "1"}])));
    }

    #[test]
    fn quantities_match_by_value_as_the_apiserver_rewrites_them() {
        assert!(is_subset(&json!({"cpu": "0.5"}), &json!({"cpu": "500m"})));
        assert!(is_subset(&json!({"memory": "1024Mi"}), &json!({"memory": "1Gi"})));
        assert!(!is_subset(&json!({"memory": "1G"}), &json!({"memory": "1Gi"})));
        assert!(is_subset(&json!({"cpu": "2e3"}), &json!({"cpu": "2k"})));
        assert!(!is_subset(&json!({"host": "redis"}), &json!({"host": "Redis"})));
    }

    #[test]
    fn empty_collections_the_apiserver_drops_are_not_a_difference() {
        assert!(is_subset(&json!({"metadata": {"annotations": {}}}), &json!({"metadata": {}})));
    }
}
