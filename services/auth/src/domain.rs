//! The auth service's rules, without I/O: what an acceptable email,
//! password and display name are, what a presented refresh token leads to,
//! and when signing keys rotate and retire.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Shortest password accepted: NIST SP 800-63B's minimum for
/// user-chosen secrets.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted. Argon2 hashes any length, but a bound keeps a
/// megabyte "password" from becoming a cheap way to burn CPU; 128 leaves
/// room for any passphrase or password-manager output.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest display name accepted: it is shown in headers and emails.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// Input that breaks a rule; the message is for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// The email as stored and compared: trimmed and lower case, so that
/// `Ada@Example.com` and `ada@example.com` are one account.
pub fn normalize_email(raw: &str) -> Result<String, InvalidInput> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(InvalidInput("email is required".to_owned()));
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(InvalidInput(format!("email must be at most {MAX_EMAIL_CHARS} characters")));
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if !valid {
        return Err(InvalidInput(format!("email {raw:?} is not a valid address (expected name@domain.tld)")));
    }
    Ok(email)
}

/// Checks the password policy: 8 to 128 characters, not blank.
pub fn check_password(password: &str) -> Result<(), InvalidInput> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(InvalidInput(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters long (got {chars})"
        )));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(InvalidInput(format!("password must be at most {MAX_PASSWORD_CHARS} characters long")));
    }
    if password.trim().is_empty() {
        return Err(InvalidInput("password must not be only whitespace".to_owned()));
    }
    Ok(())
}

/// The display name to store: the trimmed input, or the email's local part
/// when none is given.
pub fn display_name(raw: &str, email: &str) -> Result<String, InvalidInput> {
    let name = raw.trim();
    let name = if name.is_empty() { email.split('@').next().unwrap_or(email) } else { name };
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(InvalidInput(format!(
            "display name must be at most {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_owned())
}

/// What the service knows about a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenState {
    /// When it was revoked (used, logged out, or its family revoked).
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What to do with a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Valid: revoke it and issue a successor in the same family.
    Rotate,
    /// Already revoked: someone replays an old token, so whoever holds the
    /// current one may be a thief. Revoke the whole family (every token
    /// descended from the same login) and refuse.
    RevokeFamily,
    /// Expired: refuse; the user logs in again.
    Expired,
}

/// Decides what a presented refresh token leads to.
pub fn decide_refresh(state: RefreshTokenState, now: DateTime<Utc>) -> RefreshDecision {
    if state.revoked_at.is_some() {
        RefreshDecision::RevokeFamily
    } else if now >= state.expires_at {
        RefreshDecision::Expired
    } else {
        RefreshDecision::Rotate
    }
}

/// Clock skew allowed between a key's retirement and the last token it
/// signed expiring, so that no valid token ever loses its key.
pub const KEY_RETIREMENT_SLACK: Duration = Duration::from_secs(120);

/// Whether the active signing key, created at `active_since`, is due for
/// rotation. A zero interval disables rotation.
pub fn key_rotation_due(active_since: DateTime<Utc>, now: DateTime<Utc>, interval: Duration) -> bool {
    !interval.is_zero() && now.signed_duration_since(active_since).to_std().is_ok_and(|age| age >= interval)
}

/// Until when a key that stops signing at `retired_at` must stay published:
/// the last token it signed expires an access-token lifetime later.
pub fn key_expiry(retired_at: DateTime<Utc>, access_token_ttl: Duration) -> DateTime<Utc> {
    retired_at + chrono::Duration::from_std(access_token_ttl + KEY_RETIREMENT_SLACK).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased_so_case_variants_are_one_account() {
        assert_eq!(normalize_email("  Ada@Example.COM "), Ok("ada@example.com".to_owned()));
    }

    #[test]
    fn malformed_emails_are_rejected_with_a_message() {
        for email in
            ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "a@b@c.com", "a@.com"]
        {
            let error = normalize_email(email).expect_err(email);
            assert!(error.0.contains("email"), "{error}");
        }
    }

    #[test]
    fn passwords_shorter_than_eight_characters_are_rejected_naming_the_minimum() {
        let error = check_password("seven77").expect_err("too short");
        assert!(error.0.contains("at least 8 characters"), "{error}");
        assert!(check_password("eight888").is_ok());
        // Characters, not bytes: eight accented letters are enough.
        assert!(check_password("éééééééé").is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
        assert!(check_password("         ").is_err());
    }

    #[test]
    fn display_name_defaults_to_the_local_part() {
        assert_eq!(display_name("  ", "ada@example.com"), Ok("ada".to_owned()));
        assert_eq!(display_name(" Ada L. ", "ada@example.com"), Ok("Ada L.".to_owned()));
        assert!(display_name(&"n".repeat(101), "a@b.c").is_err());
    }

    #[test]
    fn a_live_refresh_token_rotates_a_revoked_one_revokes_its_family_an_old_one_expires() {
        let now = Utc::now();
        let later = now + chrono::Duration::days(1);
        let live = RefreshTokenState { revoked_at: None, expires_at: later };
        assert_eq!(decide_refresh(live, now), RefreshDecision::Rotate);
        let reused = RefreshTokenState { revoked_at: Some(now), expires_at: later };
        assert_eq!(decide_refresh(reused, now), RefreshDecision::RevokeFamily);
        let expired = RefreshTokenState { revoked_at: None, expires_at: now };
        assert_eq!(decide_refresh(expired, now), RefreshDecision::Expired);
    }

    #[test]
    fn keys_rotate_after_the_interval_and_stay_published_for_one_token_lifetime() {
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert!(!key_rotation_due(now - chrono::Duration::hours(23), now, day));
        assert!(key_rotation_due(now - chrono::Duration::hours(25), now, day));
        assert!(!key_rotation_due(now - chrono::Duration::days(400), now, Duration::ZERO), "zero disables");
        let expiry = key_expiry(now, Duration::from_secs(900));
        assert_eq!(expiry - now, chrono::Duration::seconds(900 + 120));
    }
}
