//! Connection URLs as they may appear in logs and errors.
//!
//! One redaction for every URL a process is given (Postgres, Redis, Kafka
//! SASL settings alike): the password of the user-info part and the value of
//! any query parameter that carries a secret are replaced by `***`. Postgres
//! accepts the password as `?password=` as well as in the user-info part,
//! and `?sslpassword=` unlocks a client key; both would otherwise reach the
//! logs in full.

/// What replaces a secret.
const HIDDEN: &str = "***";

/// Whether the query parameter `name` carries a secret.
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password") || name.contains("secret") || name == "token"
}

/// The URL with its password (if any) and every secret query parameter
/// replaced by `***`; everything else (scheme, user, hosts, database,
/// other parameters) stays, so the log still says where it went.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            out.push_str(&base[..scheme_end + 3]);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&base[at..]);
        }
        _ => out.push_str(base),
    }
    if let Some(query) = query {
        out.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _value)) if is_secret_parameter(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(HIDDEN);
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn the_password_of_the_user_info_is_hidden_and_the_rest_kept() {
        assert_eq!(redact("postgres://shop:s3cret@db:5432/orders"), "postgres://shop:***@db:5432/orders");
        assert_eq!(redact("redis://:s3cret@redis:6379/0"), "redis://:***@redis:6379/0");
        assert_eq!(redact("redis://user:s3cret@redis:6379"), "redis://user:***@redis:6379");
        // An `@` inside the password: the host starts after the last one.
        assert_eq!(redact("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
        assert_eq!(redact("postgres://shop@db/orders"), "postgres://shop@db/orders");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_password_given_as_a_query_parameter_is_hidden_too() {
        assert_eq!(
            redact("postgres://db:5432/orders?user=shop&password=s3cret&sslmode=verify-full"),
            "postgres://db:5432/orders?user=shop&password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact("postgres://u:a@db/x?sslpassword=key-pass&PASSWORD=other"),
            "postgres://u:***@db/x?sslpassword=***&PASSWORD=***"
        );
        for url in [
            "postgres://db/x?password=s3cret",
            "postgres://u:s3cret@db/x?application_name=a&password=s3cret",
            "redis://:s3cret@r:6379?token=s3cret",
        ] {
            assert!(!redact(url).contains("s3cret"), "{url} -> {}", redact(url));
        }
    }
}
