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

/// Wrong passwords in a row an account takes before sign-ins to it pause.
pub const FREE_LOGIN_FAILURES: u32 = 5;
/// The first pause; each further failure doubles it.
pub const FIRST_LOGIN_PAUSE: Duration = Duration::from_secs(30);
/// The longest pause: a guesser gets at most four tries an hour, and the
/// owner, who knows the password, waits at most this long.
pub const MAX_LOGIN_PAUSE: Duration = Duration::from_secs(15 * 60);

/// An account's sign-in throttle as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    /// Sign-in attempts in a row that did not succeed (an attempt counts
    /// before its password is checked, and a success resets it).
    pub failures: u32,
    /// Until when sign-ins are refused unheard.
    pub paused_until: Option<DateTime<Utc>>,
}

/// What a sign-in attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Check the password, with the throttle stored as `counted` first: the
    /// attempt is counted as a failure (and the pause it would earn already
    /// set) before the slow password check, so that attempts racing in
    /// parallel cannot all slip through before the first one is counted.
    /// A success then resets the throttle.
    Check { counted: LoginThrottle },
    /// Refuse without checking the password; retry after `retry_after`.
    Paused { retry_after: Duration },
}

/// The pause an account earns after `failures` failures in a row.
pub fn login_pause(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(FREE_LOGIN_FAILURES)?;
    let factor = 2u32.checked_pow(beyond).unwrap_or(u32::MAX);
    Some(FIRST_LOGIN_PAUSE.checked_mul(factor).unwrap_or(MAX_LOGIN_PAUSE).min(MAX_LOGIN_PAUSE))
}

/// Decides a sign-in attempt to an account whose throttle is `stored`.
pub fn decide_login(stored: LoginThrottle, now: DateTime<Utc>) -> LoginAttempt {
    if let Some(until) = stored.paused_until.filter(|until| *until > now) {
        let retry_after = (until - now).to_std().unwrap_or_default();
        return LoginAttempt::Paused { retry_after };
    }
    let failures = stored.failures.saturating_add(1);
    let paused_until =
        login_pause(failures).map(|pause| now + chrono::Duration::from_std(pause).unwrap_or_default());
    LoginAttempt::Check { counted: LoginThrottle { failures, paused_until } }
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
    fn five_failures_are_free_then_pauses_double_up_to_fifteen_minutes() {
        assert_eq!((1..=4).map(login_pause).collect::<Vec<_>>(), [None; 4]);
        let pauses: Vec<u64> = (5..=12).map(|n| login_pause(n).unwrap().as_secs()).collect();
        assert_eq!(pauses, [30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(login_pause(u32::MAX), Some(MAX_LOGIN_PAUSE));
    }

    #[test]
    fn an_attempt_is_counted_before_the_check_and_a_paused_account_is_refused_unheard() {
        let now = Utc::now();
        let mut stored = LoginThrottle { failures: 0, paused_until: None };
        for expected in 1..=4 {
            let LoginAttempt::Check { counted } = decide_login(stored, now) else { panic!("paused early") };
            assert_eq!(counted, LoginThrottle { failures: expected, paused_until: None });
            stored = counted;
        }
        // The fifth attempt is still heard, but already earns the pause.
        let LoginAttempt::Check { counted } = decide_login(stored, now) else { panic!("fifth refused") };
        assert_eq!(counted.paused_until, Some(now + chrono::Duration::seconds(30)));
        assert_eq!(
            decide_login(counted, now + chrono::Duration::seconds(10)),
            LoginAttempt::Paused { retry_after: Duration::from_secs(20) }
        );
        // After the pause one attempt is heard again, earning twice the pause.
        let later = now + chrono::Duration::seconds(30);
        let LoginAttempt::Check { counted } = decide_login(counted, later) else { panic!("still paused") };
        assert_eq!(counted.failures, 6);
        assert_eq!(counted.paused_until, Some(later + chrono::Duration::seconds(60)));
    }

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
