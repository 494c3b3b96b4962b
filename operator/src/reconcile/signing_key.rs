//! Rotation of the auth service's signing key: the reconciler decides what
//! the signing-key Secret holds ([`decide`], pure, time injected), `build`
//! renders it ([`SigningKeySecret`]).
//!
//! A rotation is requested with a new value of the stack's
//! [`ROTATE_SIGNING_KEY_ANNOTATION`], or falls due every
//! `spec.auth.signingKeyRotationInterval` after the current key activated.
//! It runs in two steps, each one write of the Secret:
//!
//! 1. *Start*: a fresh key goes into [`NEXT_SIGNING_KEY_PEM_KEY`] with its
//!    activation, `signingKeyPrepublish` ahead, in
//!    [`NEXT_SIGNING_KEY_ACTIVATION_KEY`]. The auth replicas see the files
//!    change (the kubelet refreshes the mount), publish the key at once and
//!    sign with it from its activation on; the current key keeps verifying.
//! 2. *Finish*, at [`RETIRES_AT_ANNOTATION`] = activation + the longest
//!    access-token lifetime + [`RETIREMENT_SLACK`] (no token the old key
//!    signed is valid any more): the next key becomes
//!    [`SIGNING_KEY_PEM_KEY`] and the old key leaves the Secret.
//!
//! Refresh tokens are opaque database rows, untouched: nobody is logged
//! out. All state lives in the Secret (its data and annotations), none in
//! the operator's memory, so a restarted operator carries on where the last
//! one stopped. Events on the stack say when a rotation started and
//! finished.

use std::collections::BTreeMap;
use std::time::Duration;

use commerce_api::CommerceStack;
use commerce_api::crd::stack::ROTATE_SIGNING_KEY_ANNOTATION;
use commerce_topology::Service;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::status::Outcome;
use super::{Context, publish};
use crate::Error;
use crate::build::secrets::{
    self, NEXT_SIGNING_KEY_ACTIVATION_KEY, NEXT_SIGNING_KEY_PEM_KEY, SIGNING_KEY_PEM_KEY, SecretValues,
    SigningKeySecret, ValueKind,
};
use crate::validate::ValidStack;

/// Secret annotation: when the key in [`SIGNING_KEY_PEM_KEY`] started
/// signing (RFC 3339); periodic rotation counts from it.
pub const ACTIVATED_AT_ANNOTATION: &str = "commerce-stack.dev/signing-key-activated-at";
/// Secret annotation: the last value of the stack's
/// [`ROTATE_SIGNING_KEY_ANNOTATION`] that was acted on.
pub const HANDLED_REQUEST_ANNOTATION: &str = "commerce-stack.dev/signing-key-rotation-request";
/// Secret annotation, during a rotation: when the key in
/// [`SIGNING_KEY_PEM_KEY`] has no valid token left, and the next key
/// replaces it.
pub const RETIRES_AT_ANNOTATION: &str = "commerce-stack.dev/signing-key-retires-at";
/// Event reason: a rotation started (the next key is published).
pub const REASON_ROTATION_STARTED: &str = "SigningKeyRotationStarted";
/// Event reason: a rotation finished (the old key is gone).
pub const REASON_ROTATION_FINISHED: &str = "SigningKeyRotated";

/// Added to the last old-key token's expiry before the old key goes: the
/// auth service keeps the same slack (`KEY_RETIREMENT_SLACK`, 2 min), which
/// covers its verifiers' 30 s leeway on `exp` and clock skew.
pub const RETIREMENT_SLACK: Duration = Duration::from_secs(120);

/// What decides a rotation, from the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The stack's [`ROTATE_SIGNING_KEY_ANNOTATION`], if set.
    pub request: Option<String>,
    /// `spec.auth.signingKeyRotationInterval`.
    pub interval: Option<Duration>,
    /// `spec.auth.signingKeyPrepublish`.
    pub prepublish: Duration,
    /// `spec.auth.accessTokenTtl`: how long the old key's last token lives.
    pub access_token_ttl: Duration,
}

impl Policy {
    /// The policy of a stack.
    pub fn of(stack: &CommerceStack) -> Self {
        let auth = &stack.spec.auth;
        Policy {
            request: stack.annotations().get(ROTATE_SIGNING_KEY_ANNOTATION).cloned(),
            interval: auth.signing_key_rotation_interval.map(Duration::from),
            prepublish: auth.signing_key_prepublish.into(),
            access_token_ttl: auth.access_token_ttl.into(),
        }
    }
}

/// The next key of a rotation under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextKey {
    /// PKCS#8 PEM.
    pub pem: String,
    /// When it starts signing.
    pub activates_at: Timestamp,
}

/// The rotation state the stored Secret holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// A rotation under way; `None` also when the stored next key is
    /// unusable (no or an unreadable activation), which is then dropped.
    pub next: Option<NextKey>,
    /// [`ACTIVATED_AT_ANNOTATION`].
    pub activated_at: Option<Timestamp>,
    /// [`HANDLED_REQUEST_ANNOTATION`].
    pub handled_request: Option<String>,
    /// [`RETIRES_AT_ANNOTATION`].
    pub retires_at: Option<Timestamp>,
    /// The Secret's creation: the activation of a key stored before the
    /// operator recorded activations.
    pub created_at: Option<Timestamp>,
}

impl Stored {
    /// Reads the state from a stored Secret.
    pub fn from_secret(secret: &Secret) -> Self {
        let data = |key: &str| {
            secret
                .data
                .as_ref()?
                .get(key)
                .and_then(|value| String::from_utf8(value.0.clone()).ok())
                .filter(|value| !value.is_empty())
        };
        let annotation = |key: &str| secret.metadata.annotations.as_ref()?.get(key).cloned();
        let time = |text: Option<String>| text?.trim().parse::<Timestamp>().ok();
        let next = match (data(NEXT_SIGNING_KEY_PEM_KEY), time(data(NEXT_SIGNING_KEY_ACTIVATION_KEY))) {
            (Some(pem), Some(activates_at)) => Some(NextKey { pem, activates_at }),
            _ => None,
        };
        Stored {
            next,
            activated_at: time(annotation(ACTIVATED_AT_ANNOTATION)),
            handled_request: annotation(HANDLED_REQUEST_ANNOTATION),
            retires_at: time(annotation(RETIRES_AT_ANNOTATION)),
            created_at: secret.metadata.creation_timestamp.as_ref().map(|time| time.0),
        }
    }
}

/// Why a rotation started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A new value of the stack's annotation.
    Requested(String),
    /// The rotation interval has passed since the current key activated.
    Scheduled(Duration),
}

/// A step of a rotation this reconcile takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The next key was added.
    Started { cause: Cause, activates_at: Timestamp, retires_at: Timestamp },
    /// The next key replaced the old one.
    Finished { activated_at: Timestamp, retired_at: Timestamp },
}

/// What the Secret should hold, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The Secret's content.
    pub secret: SigningKeySecret,
    /// The step taken now, if any.
    pub transition: Option<Transition>,
    /// When to look again: the next step's time (retirement, or the next
    /// periodic rotation), or zero when a request waits for its turn.
    pub recheck_in: Option<Duration>,
}

/// Decides the signing-key Secret at `now`. `stored` is the Secret's state
/// (`None` before the Secret exists), `current_pem` the key it holds (or a
/// freshly generated one), `new_key` makes a rotation's next key.
pub fn decide(
    stored: Option<&Stored>,
    current_pem: &str,
    policy: &Policy,
    now: Timestamp,
    new_key: impl FnOnce() -> String,
) -> Decision {
    let now = to_second(now);
    let Some(stored) = stored else {
        // A new key: it signs at once (nobody can have cached a key yet),
        // and a request already on the stack is served by it.
        let secret = render(current_pem, None, now, policy.request.as_deref(), None);
        return Decision { secret, transition: None, recheck_in: policy.interval };
    };
    let activated_at = stored.activated_at.or(stored.created_at).unwrap_or(now);
    let handled = stored.handled_request.as_deref();

    if let Some(next) = &stored.next {
        // The longest token the old key signed ends one lifetime after the
        // activation; a lifetime raised meanwhile counts too.
        let retires_at = retirement(next.activates_at, policy.access_token_ttl)
            .max(stored.retires_at.unwrap_or(Timestamp::MIN));
        if now < retires_at {
            let secret = render(current_pem, Some(next), activated_at, handled, Some(retires_at));
            return Decision { secret, transition: None, recheck_in: Some(until(now, retires_at)) };
        }
        let secret = render(&next.pem, None, next.activates_at, handled, None);
        let pending =
            pending_request(policy, handled).is_some() || due(policy.interval, next.activates_at, now);
        return Decision {
            secret,
            transition: Some(Transition::Finished {
                activated_at: next.activates_at,
                retired_at: retires_at,
            }),
            recheck_in: if pending {
                Some(Duration::ZERO)
            } else {
                policy.interval.map(|i| until(now, plus(next.activates_at, i)))
            },
        };
    }

    let cause = match pending_request(policy, handled) {
        Some(request) => Some(Cause::Requested(request.to_owned())),
        None => policy.interval.filter(|_| due(policy.interval, activated_at, now)).map(Cause::Scheduled),
    };
    match cause {
        None => Decision {
            secret: render(current_pem, None, activated_at, handled, None),
            transition: None,
            recheck_in: policy.interval.map(|interval| until(now, plus(activated_at, interval))),
        },
        Some(cause) => {
            let next = NextKey { pem: new_key(), activates_at: plus(now, policy.prepublish) };
            let retires_at = retirement(next.activates_at, policy.access_token_ttl);
            let handled = match &cause {
                Cause::Requested(request) => Some(request.as_str()),
                Cause::Scheduled(_) => handled,
            };
            Decision {
                secret: render(current_pem, Some(&next), activated_at, handled, Some(retires_at)),
                transition: Some(Transition::Started { cause, activates_at: next.activates_at, retires_at }),
                recheck_in: Some(until(now, retires_at)),
            }
        }
    }
}

/// The stack's request, if it is new.
fn pending_request<'p>(policy: &'p Policy, handled: Option<&str>) -> Option<&'p str> {
    policy.request.as_deref().filter(|request| Some(*request) != handled)
}

/// Whether a periodic rotation is due for a key activated at `activated_at`.
fn due(interval: Option<Duration>, activated_at: Timestamp, now: Timestamp) -> bool {
    interval.is_some_and(|interval| now >= plus(activated_at, interval))
}

/// When a key replaced at `activates_at` has no valid token left.
fn retirement(activates_at: Timestamp, access_token_ttl: Duration) -> Timestamp {
    plus(activates_at, access_token_ttl + RETIREMENT_SLACK)
}

fn render(
    current_pem: &str,
    next: Option<&NextKey>,
    activated_at: Timestamp,
    handled_request: Option<&str>,
    retires_at: Option<Timestamp>,
) -> SigningKeySecret {
    let mut data = BTreeMap::from([(SIGNING_KEY_PEM_KEY.to_owned(), current_pem.to_owned())]);
    let mut annotations =
        BTreeMap::from([(ACTIVATED_AT_ANNOTATION.to_owned(), to_second(activated_at).to_string())]);
    if let Some(next) = next {
        data.insert(NEXT_SIGNING_KEY_PEM_KEY.to_owned(), next.pem.clone());
        data.insert(NEXT_SIGNING_KEY_ACTIVATION_KEY.to_owned(), to_second(next.activates_at).to_string());
    }
    if let Some(request) = handled_request {
        annotations.insert(HANDLED_REQUEST_ANNOTATION.to_owned(), request.to_owned());
    }
    if let Some(retires_at) = retires_at {
        annotations.insert(RETIRES_AT_ANNOTATION.to_owned(), to_second(retires_at).to_string());
    }
    SigningKeySecret { data, annotations }
}

fn to_second(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

fn plus(at: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration)
        .ok()
        .and_then(|duration| at.checked_add(duration).ok())
        .unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `at`; zero when it has passed.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO)
}

/// The rotation step of one reconcile, to announce once its Secret is
/// written.
#[derive(Debug, Default)]
pub struct Rotation {
    secret: String,
    transition: Option<Transition>,
    recheck_in: Option<Duration>,
}

/// Decides the signing-key Secret of `valid` from the stored Secrets and
/// hands it to `values` for `build` to render. Nothing to do when the auth
/// service is disabled.
pub fn decide_for(
    valid: &ValidStack<'_>,
    existing: &[Secret],
    values: &mut SecretValues,
    now: &Time,
) -> Result<Rotation, Error> {
    if !valid.is_enabled(Service::Auth) {
        return Ok(Rotation::default());
    }
    let name = secrets::signing_key_secret_name(valid);
    let stored = existing
        .iter()
        .find(|secret| secret.metadata.name.as_deref() == Some(name.as_str()))
        .map(Stored::from_secret);
    let current_pem = values.get(&name, SIGNING_KEY_PEM_KEY)?;
    let decision = decide(stored.as_ref(), &current_pem, &Policy::of(valid.stack), now.0, || {
        secrets::generate(ValueKind::Ed25519Pkcs8Pem, &mut rand::rng())
    });
    values.set_signing_key(decision.secret);
    Ok(Rotation { secret: name, transition: decision.transition, recheck_in: decision.recheck_in })
}

impl Rotation {
    /// `default`, or sooner when the rotation's next step is due earlier
    /// (a second late, so that the step has surely come).
    pub fn requeue_within(&self, default: Duration) -> Duration {
        match self.recheck_in {
            Some(recheck) => default.min(recheck + Duration::from_secs(1)),
            None => default,
        }
    }

    /// Publishes an Event for the step taken, if its Secret was written
    /// (else the step is taken again on the next reconcile).
    pub async fn announce(&self, ctx: &Context, stack: &CommerceStack, outcome: &Outcome) {
        let Some(transition) = &self.transition else { return };
        if outcome.problems.iter().any(|problem| problem.kind == "Secret" && problem.name == self.secret) {
            return;
        }
        let (reason, note) = match transition {
            Transition::Started { cause, activates_at, retires_at } => {
                let cause = match cause {
                    Cause::Requested(value) => format!("requested ({ROTATE_SIGNING_KEY_ANNOTATION}={value})"),
                    Cause::Scheduled(interval) => {
                        format!("scheduled (auth.signingKeyRotationInterval {}s)", interval.as_secs())
                    }
                };
                (
                    REASON_ROTATION_STARTED,
                    format!(
                        "signing key rotation {cause}: a new key is published in Secret/{}, signs \
                         from {activates_at}; the current key verifies until {retires_at}, then the \
                         rotation finishes",
                        self.secret
                    ),
                )
            }
            Transition::Finished { activated_at, retired_at } => (
                REASON_ROTATION_FINISHED,
                format!(
                    "signing key rotation finished: the key signing since {activated_at} is the only one in \
                     Secret/{}; the previous key was retired at {retired_at}",
                    self.secret
                ),
            ),
        };
        info!(stack = %stack.name_any(), secret = %self.secret, reason, "{note}");
        publish(ctx, &stack.object_ref(&()), EventType::Normal, reason, note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy { request: None, interval: None, prepublish: 5 * MINUTE, access_token_ttl: 15 * MINUTE }
    }

    /// The state a reconcile leaves, as the next one reads it back.
    fn stored(decision: &Decision) -> Stored {
        let secret = Secret {
            data: Some(
                decision
                    .secret
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            metadata: kube::api::ObjectMeta {
                annotations: Some(decision.secret.annotations.clone()),
                ..Default::default()
            },
            ..Secret::default()
        };
        Stored::from_secret(&secret)
    }

    fn step(previous: &Decision, policy: &Policy, now: Timestamp) -> Decision {
        let current = previous.secret.data[SIGNING_KEY_PEM_KEY].clone();
        decide(Some(&stored(previous)), &current, policy, now, || "NEW KEY".to_owned())
    }

    fn no_key() -> String {
        panic!("no key may be generated here")
    }

    #[test]
    fn a_first_secret_records_the_activation_and_counts_a_present_request_as_served() {
        let policy = Policy { request: Some("2026-01-01".into()), ..policy() };
        let first = decide(None, "KEY A", &policy, at("2026-03-01T10:00:00.7Z"), no_key);
        assert_eq!(first.transition, None);
        assert_eq!(first.secret.data, BTreeMap::from([(SIGNING_KEY_PEM_KEY.to_owned(), "KEY A".to_owned())]));
        assert_eq!(first.secret.annotations[ACTIVATED_AT_ANNOTATION], "2026-03-01T10:00:00Z");
        assert_eq!(first.secret.annotations[HANDLED_REQUEST_ANNOTATION], "2026-01-01");
        let later = step(&first, &policy, at("2026-03-02T10:00:00Z"));
        assert_eq!((later.transition, later.secret), (None, first.secret), "nothing new was requested");
    }

    #[test]
    fn a_request_prepublishes_the_next_key_then_promotes_it_once_the_old_keys_tokens_have_expired() {
        let quiet = decide(None, "KEY A", &policy(), at("2026-03-01T10:00:00Z"), no_key);
        let policy = Policy { request: Some("first".into()), ..policy() };

        let started = step(&quiet, &policy, at("2026-03-05T12:00:00Z"));
        let activates_at = at("2026-03-05T12:05:00Z");
        let retires_at = at("2026-03-05T12:22:00Z"); // + 15 min tokens + 2 min slack
        assert_eq!(
            started.transition,
            Some(Transition::Started { cause: Cause::Requested("first".into()), activates_at, retires_at })
        );
        let data = &started.secret.data;
        assert_eq!(data[SIGNING_KEY_PEM_KEY], "KEY A", "the old key signs until the activation");
        assert_eq!(data[NEXT_SIGNING_KEY_PEM_KEY], "NEW KEY");
        assert_eq!(data[NEXT_SIGNING_KEY_ACTIVATION_KEY], "2026-03-05T12:05:00Z");
        assert_eq!(started.secret.annotations[RETIRES_AT_ANNOTATION], "2026-03-05T12:22:00Z");
        assert_eq!(started.secret.annotations[HANDLED_REQUEST_ANNOTATION], "first");
        assert_eq!(started.recheck_in, Some(22 * MINUTE));

        // Past the activation, but the old key's last tokens still live.
        let waiting = step(&started, &policy, at("2026-03-05T12:21:59Z"));
        assert_eq!((&waiting.transition, &waiting.secret), (&None, &started.secret));
        assert_eq!(waiting.recheck_in, Some(Duration::from_secs(1)));

        let finished = step(&waiting, &policy, retires_at);
        assert_eq!(
            finished.transition,
            Some(Transition::Finished { activated_at: activates_at, retired_at: retires_at })
        );
        assert_eq!(
            finished.secret.data,
            BTreeMap::from([(SIGNING_KEY_PEM_KEY.to_owned(), "NEW KEY".to_owned())]),
            "promoted, the old key dropped"
        );
        assert_eq!(finished.secret.annotations[ACTIVATED_AT_ANNOTATION], "2026-03-05T12:05:00Z");
        assert!(!finished.secret.annotations.contains_key(RETIRES_AT_ANNOTATION));
        assert_eq!(finished.recheck_in, None);

        // The same request value again is no new request.
        let after = step(&finished, &policy, at("2026-03-09T00:00:00Z"));
        assert_eq!((after.transition, after.secret), (None, finished.secret));
    }

    #[test]
    fn a_periodic_rotation_falls_due_an_interval_after_the_current_key_activated() {
        let policy = Policy { interval: Some(24 * 60 * MINUTE), ..policy() };
        let first = decide(None, "KEY A", &policy, at("2026-03-01T10:00:00Z"), no_key);
        assert_eq!(first.recheck_in, Some(24 * 60 * MINUTE));
        let early = step(&first, &policy, at("2026-03-02T09:59:59Z"));
        assert_eq!((&early.transition, early.recheck_in), (&None, Some(Duration::from_secs(1))));
        let due = step(&early, &policy, at("2026-03-02T10:00:00Z"));
        assert!(matches!(due.transition, Some(Transition::Started { cause: Cause::Scheduled(_), .. })));
        assert!(!due.secret.annotations.contains_key(HANDLED_REQUEST_ANNOTATION));
        let done = step(&due, &policy, at("2026-03-02T10:30:00Z"));
        assert!(matches!(done.transition, Some(Transition::Finished { .. })));
        // The next one counts from the new key's activation (10:05).
        assert_eq!(done.recheck_in, Some(23 * 60 * MINUTE + 35 * MINUTE));
        assert_eq!(step(&done, &policy, at("2026-03-03T10:04:59Z")).transition, None);
    }

    #[test]
    fn a_request_made_during_a_rotation_starts_another_once_it_has_finished() {
        let first = decide(None, "KEY A", &policy(), at("2026-03-01T10:00:00Z"), no_key);
        let one = Policy { request: Some("one".into()), ..policy() };
        let started = step(&first, &one, at("2026-03-01T11:00:00Z"));
        let two = Policy { request: Some("two".into()), ..policy() };
        let during = step(&started, &two, at("2026-03-01T11:10:00Z"));
        assert_eq!((&during.transition, &during.secret), (&None, &started.secret), "one rotation at a time");
        let finished = step(&during, &two, at("2026-03-01T11:22:00Z"));
        assert!(matches!(finished.transition, Some(Transition::Finished { .. })));
        assert_eq!(finished.recheck_in, Some(Duration::ZERO), "the waiting request is looked at at once");
        let again = step(&finished, &two, at("2026-03-01T11:22:01Z"));
        let Some(Transition::Started { cause: Cause::Requested(request), .. }) = again.transition else {
            panic!("another rotation starts: {:?}", again.transition);
        };
        assert_eq!(request, "two");
    }

    #[test]
    fn a_token_lifetime_raised_during_a_rotation_postpones_the_retirement() {
        let first = decide(None, "KEY A", &policy(), at("2026-03-01T10:00:00Z"), no_key);
        let request = Policy { request: Some("r".into()), ..policy() };
        let started = step(&first, &request, at("2026-03-01T11:00:00Z"));
        let longer = Policy { access_token_ttl: 60 * MINUTE, ..request.clone() };
        // 11:05 + 60 min + 2 min.
        let waiting = step(&started, &longer, at("2026-03-01T11:30:00Z"));
        assert_eq!(waiting.transition, None);
        assert_eq!(waiting.secret.annotations[RETIRES_AT_ANNOTATION], "2026-03-01T12:07:00Z");
        // Lowered again: the recorded retirement stands.
        let still = step(&waiting, &request, at("2026-03-01T12:06:59Z"));
        assert_eq!(still.transition, None);
        assert!(matches!(
            step(&still, &request, at("2026-03-01T12:07:00Z")).transition,
            Some(Transition::Finished { .. })
        ));
    }

    #[test]
    fn a_next_key_without_a_readable_activation_is_dropped_not_kept_forever() {
        let first = decide(None, "KEY A", &policy(), at("2026-03-01T10:00:00Z"), no_key);
        let mut broken = first.clone();
        broken.secret.data.insert(NEXT_SIGNING_KEY_PEM_KEY.to_owned(), "STRAY".to_owned());
        broken.secret.data.insert(NEXT_SIGNING_KEY_ACTIVATION_KEY.to_owned(), "soon".to_owned());
        let repaired = step(&broken, &policy(), at("2026-03-01T11:00:00Z"));
        assert_eq!(repaired.secret, first.secret);
    }

    #[test]
    fn a_key_stored_before_activations_were_recorded_counts_from_the_secrets_creation() {
        let stored = Stored { created_at: Some(at("2026-01-01T00:00:00Z")), ..Stored::default() };
        let policy = Policy { interval: Some(30 * 24 * 60 * MINUTE), ..policy() };
        let decision = decide(Some(&stored), "KEY A", &policy, at("2026-02-01T00:00:00Z"), || "NEW".into());
        assert!(matches!(decision.transition, Some(Transition::Started { cause: Cause::Scheduled(_), .. })));
        assert_eq!(decision.secret.annotations[ACTIVATED_AT_ANNOTATION], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn the_requeue_comes_a_second_after_the_next_step_and_never_later_than_the_default() {
        let resync = 600 * Duration::from_secs(1);
        let soon = Rotation { recheck_in: Some(MINUTE), ..Rotation::default() };
        assert_eq!(soon.requeue_within(resync), Duration::from_secs(61));
        let far = Rotation { recheck_in: Some(60 * MINUTE), ..Rotation::default() };
        assert_eq!(far.requeue_within(resync), resync);
        assert_eq!(Rotation::default().requeue_within(resync), resync);
    }
}
