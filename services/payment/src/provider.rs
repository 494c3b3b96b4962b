//! The payment provider port ([`PaymentProvider`]), the deterministic mock
//! adapter used by default ([`MockProvider`]) with its runtime controls, and
//! the circuit breaker ([`ProviderBreaker`]) every provider call goes through.
//!
//! # The mock's rules (documented contract for tests)
//!
//! - payment token `tok_decline` -> declined ("card declined");
//! - payment token `tok_unavailable` -> the provider is unavailable for
//!   that charge, always;
//! - an amount above `--mock-decline-amount-over` (minor units; unset = no
//!   limit) -> declined ("amount over limit");
//! - every other charge is captured, reference `mock_ch_<key>`;
//! - the whole provider can be switched unavailable at runtime: in-process
//!   with [`MockProvider::set_available`], or from outside the process on the
//!   payment service's admin port: `POST /mock-provider/unavailable`,
//!   `POST /mock-provider/available`, `GET /mock-provider` (JSON state:
//!   availability, charges taken, calls). `--mock-start-unavailable` starts it
//!   switched off;
//! - payment token `tok_lost_answer` -> the charge is captured, but every
//!   answer is lost: the caller sees "unavailable" (a timeout after the
//!   provider acted), so only a void tells whether money was taken;
//! - a voided charge key takes no money: a capture made under it is
//!   reversed, and a later charge with it is declined ("charge voided");
//! - `--mock-latency` delays every call, to widen race windows in tests;
//! - idempotent on the key (the order id): a repeated key returns the first
//!   outcome and takes no money again, exactly as real providers treat
//!   idempotency keys;
//! - the ledger (charges, voids, refunds) is kept in memory and, with
//!   `--mock-ledger-file`, journaled to that file before each answer
//!   ([`crate::journal`]): a restarted payment process replays it and
//!   remembers what money it took, as a real provider would, and fault tests
//!   read it to check the money. Without the file a restart forgets it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

// The provider's answers are the payment domain's words (the journal
// records them too).
pub use crate::domain::{ChargeOutcome, VoidOutcome};
use crate::journal::{Journal, JournalEntry};

/// Test token that the mock always declines.
pub const DECLINE_TOKEN: &str = "tok_decline";
/// Test token for which the mock is always unavailable.
pub const UNAVAILABLE_TOKEN: &str = "tok_unavailable";
/// Test token whose charge the mock captures while every answer is lost.
pub const LOST_ANSWER_TOKEN: &str = "tok_lost_answer";

/// A charge to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Idempotency key: the order id. A repeat must never take money twice.
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub payment_method_token: String,
}

/// A refund to make against a captured charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Idempotency key of the refund (our refund id).
    pub idempotency_key: String,
    /// The provider's reference of the charge.
    pub charge_reference: String,
    pub amount: i64,
    pub currency: String,
}

/// The provider could not answer: safe to retry later with the same key.
/// The call may still have been carried out (an answer lost on the way), so
/// a caller that gives up on a charge must void its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    #[error("payment provider circuit open; retry in {retry_after:?}")]
    CircuitOpen { retry_after: Duration },
    /// The provider is working on it (a payment still processing): ask
    /// again later. An answer, so the breaker does not count it as a
    /// failure.
    #[error("payment provider has not settled it yet: {0}")]
    Pending(String),
}

/// A payment provider adapter.
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Adapter name, stored with the payment ("mock").
    fn name(&self) -> &'static str;
    /// Charges once per idempotency key.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError>;
    /// Refunds once per idempotency key; returns the provider's refund id.
    async fn refund(&self, request: &RefundRequest) -> Result<String, ProviderError>;
    /// Settles the charge `charge` (the very request that was attempted)
    /// whose outcome is unknown (its last call failed) and that will not be
    /// charged any more (the order died): reverses any capture made under
    /// its key and makes any later charge with it take no money. Idempotent;
    /// a real provider cancels the payment intent (or refunds it if already
    /// captured). The whole request is passed, not only its key, because a
    /// provider may find the payment only by repeating the request that
    /// created it (Stripe's idempotent replay; see [`crate::stripe`]).
    async fn void(&self, charge: &ChargeRequest) -> Result<VoidOutcome, ProviderError>;
}

/// The mock's settings (flags in `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockSettings {
    /// Amounts above this (minor units) are declined; `None` for no limit.
    pub decline_amount_over: Option<i64>,
    /// Delay of every call.
    pub latency: Duration,
    /// Start switched unavailable.
    pub start_unavailable: bool,
}

/// Decides a charge the way the mock does; pure, for tests and docs.
pub fn mock_decision(
    request: &ChargeRequest,
    settings: &MockSettings,
) -> Result<ChargeOutcome, ProviderError> {
    if request.payment_method_token == UNAVAILABLE_TOKEN || request.payment_method_token == LOST_ANSWER_TOKEN
    {
        return Err(ProviderError::Unavailable(format!("token {UNAVAILABLE_TOKEN}")));
    }
    if request.payment_method_token == DECLINE_TOKEN {
        return Ok(ChargeOutcome::Declined { reason: "card declined".to_owned() });
    }
    if settings.decline_amount_over.is_some_and(|limit| request.amount > limit) {
        return Ok(ChargeOutcome::Declined { reason: "amount over limit".to_owned() });
    }
    Ok(ChargeOutcome::Captured { reference: format!("mock_ch_{}", request.idempotency_key) })
}

/// The deterministic mock provider; see the module docs. Cheap to share
/// behind an `Arc`.
#[derive(Debug)]
pub struct MockProvider {
    settings: MockSettings,
    available: AtomicBool,
    calls: AtomicU64,
    charges_taken: AtomicU64,
    /// Outcome per charge key, and refund reference per refund key.
    ledger: Mutex<MockLedger>,
}

#[derive(Debug, Default)]
struct MockLedger {
    charges: HashMap<String, ChargeOutcome>,
    refunds: HashMap<String, String>,
    voids: HashMap<String, VoidOutcome>,
    /// Where each change is written before it is made and answered.
    journal: Option<Journal>,
}

impl MockLedger {
    /// Applies `entry` to the maps (a replay, or after journaling it).
    fn apply(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Charge { key, outcome, .. } => {
                self.charges.insert(key, outcome);
            }
            JournalEntry::Void { key, outcome } => {
                self.voids.insert(key, outcome);
            }
            JournalEntry::Refund { key, reference, .. } => {
                self.refunds.insert(key, reference);
            }
        }
    }

    /// Journals `entry`, then applies it. A journal that cannot be written
    /// makes the provider unavailable for this call: it did nothing.
    fn record(&mut self, entry: JournalEntry) -> Result<(), ProviderError> {
        if let Some(journal) = &mut self.journal {
            journal.append(&entry).map_err(|error| {
                tracing::error!(%error, "mock payment provider: cannot journal its ledger");
                ProviderError::Unavailable(format!("mock ledger not written: {error}"))
            })?;
        }
        self.apply(entry);
        Ok(())
    }
}

/// The mock's state, as `GET /mock-provider` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MockState {
    pub available: bool,
    /// Provider calls made (charges and refunds, repeats included).
    pub calls: u64,
    /// Distinct charges that took money.
    pub charges_taken: u64,
    /// Distinct refunds made.
    pub refunds_made: u64,
    /// Voided charge keys whose capture was reversed.
    pub captures_reversed: u64,
}

impl MockProvider {
    pub fn new(settings: MockSettings) -> Self {
        let available = AtomicBool::new(!settings.start_unavailable);
        Self {
            settings,
            available,
            calls: AtomicU64::new(0),
            charges_taken: AtomicU64::new(0),
            ledger: Mutex::new(MockLedger::default()),
        }
    }

    /// A mock whose ledger is journaled to `path`, replaying what the file
    /// already holds (a restarted payment process remembers its charges).
    pub fn with_journal(settings: MockSettings, path: &Path) -> std::io::Result<Self> {
        let (journal, entries) = Journal::open(path)?;
        let mock = Self::new(settings);
        {
            let mut ledger = mock.lock();
            let replayed = entries.len();
            for entry in entries {
                if matches!(entry, JournalEntry::Charge { outcome: ChargeOutcome::Captured { .. }, .. }) {
                    mock.charges_taken.fetch_add(1, Ordering::SeqCst);
                }
                ledger.apply(entry);
            }
            ledger.journal = Some(journal);
            tracing::info!(path = %path.display(), replayed, "mock payment provider: ledger journal opened");
        }
        Ok(mock)
    }

    /// Switches the whole provider on or off (fault tests).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
        tracing::info!(available, "mock payment provider switched");
    }

    pub fn state(&self) -> MockState {
        let ledger = self.lock();
        let refunds_made = ledger.refunds.len() as u64;
        let captures_reversed =
            ledger.voids.values().filter(|void| matches!(void, VoidOutcome::Reversed { .. })).count() as u64;
        MockState {
            available: self.available.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
            charges_taken: self.charges_taken.load(Ordering::SeqCst),
            refunds_made,
            captures_reversed,
        }
    }

    /// How many times money was taken for `key` (0 or 1 by construction;
    /// tests assert it). A reversed capture still counts: see
    /// [`MockProvider::money_held_for`].
    pub fn charges_taken_for(&self, key: &str) -> usize {
        usize::from(matches!(self.lock().charges.get(key), Some(ChargeOutcome::Captured { .. })))
    }

    /// Whether the provider holds money for charge key `key`: captured and
    /// not reversed by a void (refunds made through [`PaymentProvider::refund`]
    /// are the payment service's own bookkeeping and not counted here).
    pub fn money_held_for(&self, key: &str) -> bool {
        let ledger = self.lock();
        matches!(ledger.charges.get(key), Some(ChargeOutcome::Captured { .. }))
            && !matches!(ledger.voids.get(key), Some(VoidOutcome::Reversed { .. }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MockLedger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn enter(&self) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ProviderError::Unavailable("mock provider switched off".to_owned()))
        }
    }
}

#[async_trait]
impl PaymentProvider for MockProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        self.enter().await?;
        let mut ledger = self.lock();
        if ledger.voids.contains_key(&request.idempotency_key) {
            return Ok(ChargeOutcome::Declined { reason: "charge voided".to_owned() });
        }
        let lost_answer = request.payment_method_token == LOST_ANSWER_TOKEN;
        if let Some(outcome) = ledger.charges.get(&request.idempotency_key) {
            if lost_answer {
                return Err(ProviderError::Unavailable(format!("token {LOST_ANSWER_TOKEN}: answer lost")));
            }
            return Ok(outcome.clone());
        }
        let outcome = if lost_answer {
            // Money is taken; the answer never reaches the caller.
            ChargeOutcome::Captured { reference: format!("mock_ch_{}", request.idempotency_key) }
        } else {
            mock_decision(request, &self.settings)?
        };
        ledger.record(JournalEntry::Charge {
            key: request.idempotency_key.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
            outcome: outcome.clone(),
        })?;
        if matches!(outcome, ChargeOutcome::Captured { .. }) {
            self.charges_taken.fetch_add(1, Ordering::SeqCst);
        }
        if lost_answer {
            return Err(ProviderError::Unavailable(format!("token {LOST_ANSWER_TOKEN}: answer lost")));
        }
        Ok(outcome)
    }

    async fn void(&self, charge: &ChargeRequest) -> Result<VoidOutcome, ProviderError> {
        let idempotency_key = charge.idempotency_key.as_str();
        self.enter().await?;
        let mut ledger = self.lock();
        if let Some(outcome) = ledger.voids.get(idempotency_key) {
            return Ok(outcome.clone());
        }
        let outcome = match ledger.charges.get(idempotency_key) {
            Some(ChargeOutcome::Captured { .. }) => {
                VoidOutcome::Reversed { reference: format!("mock_void_{idempotency_key}") }
            }
            _ => VoidOutcome::NothingCharged,
        };
        ledger.record(JournalEntry::Void { key: idempotency_key.to_owned(), outcome: outcome.clone() })?;
        Ok(outcome)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, ProviderError> {
        self.enter().await?;
        let mut ledger = self.lock();
        if let Some(reference) = ledger.refunds.get(&request.idempotency_key) {
            return Ok(reference.clone());
        }
        let reference = format!("mock_re_{}", request.idempotency_key);
        ledger.record(JournalEntry::Refund {
            key: request.idempotency_key.clone(),
            charge_reference: request.charge_reference.clone(),
            amount: request.amount,
            reference: reference.clone(),
        })?;
        Ok(reference)
    }
}

/// Admin routes controlling a mock provider from outside the process; merged
/// into the payment service's admin server.
pub fn mock_routes(mock: Arc<MockProvider>) -> axum::Router {
    use axum::extract::State;
    use axum::routing::{get, post};
    async fn show(State(mock): State<Arc<MockProvider>>) -> axum::Json<MockState> {
        axum::Json(mock.state())
    }
    async fn switch_on(State(mock): State<Arc<MockProvider>>) -> axum::Json<MockState> {
        mock.set_available(true);
        axum::Json(mock.state())
    }
    async fn switch_off(State(mock): State<Arc<MockProvider>>) -> axum::Json<MockState> {
        mock.set_available(false);
        axum::Json(mock.state())
    }
    axum::Router::new()
        .route("/mock-provider", get(show))
        .route("/mock-provider/available", post(switch_on))
        .route("/mock-provider/unavailable", post(switch_off))
        .with_state(mock)
}

/// A circuit breaker around the provider: after `failure_threshold`
/// consecutive unavailabilities it refuses calls for `open_for`, then lets
/// one probe through; the probe's result closes or re-opens it.
///
/// The platform's `CircuitBreaker` has the same policy but exposes it only
/// through the gRPC `ResilientChannel` (its admit/record are private), so a
/// non-gRPC call cannot use it; this is the minimal equivalent until the
/// platform offers a generic `call` (see the payment service's report).
#[derive(Debug, Clone)]
pub struct ProviderBreaker {
    failure_threshold: u32,
    open_for: Duration,
    state: Arc<Mutex<BreakerState>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl ProviderBreaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            state: Arc::new(Mutex::new(BreakerState::Closed { failures: 0 })),
        }
    }

    /// Whether calls currently fail fast.
    pub fn is_open(&self) -> bool {
        matches!(*self.lock(), BreakerState::Open { until } if Instant::now() < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `call` unless the breaker is open. Only `Unavailable` counts as
    /// a failure: a decline is an answer and proves the provider is up.
    pub async fn call<T, F>(&self, call: F) -> Result<T, ProviderError>
    where
        F: std::future::Future<Output = Result<T, ProviderError>>,
    {
        {
            let mut state = self.lock();
            match *state {
                BreakerState::Open { until } if Instant::now() < until => {
                    return Err(ProviderError::CircuitOpen { retry_after: until - Instant::now() });
                }
                BreakerState::Open { .. } => *state = BreakerState::HalfOpen,
                BreakerState::HalfOpen | BreakerState::Closed { .. } => {}
            }
        }
        let outcome = call.await;
        let failed = matches!(outcome, Err(ProviderError::Unavailable(_)));
        let mut state = self.lock();
        *state = match (*state, failed) {
            (_, false) => BreakerState::Closed { failures: 0 },
            (BreakerState::HalfOpen, true) => {
                tracing::warn!("payment provider still unavailable; circuit re-opened");
                BreakerState::Open { until: Instant::now() + self.open_for }
            }
            (BreakerState::Closed { failures }, true) if failures + 1 >= self.failure_threshold => {
                tracing::warn!(failures = failures + 1, "payment provider unavailable; circuit opened");
                BreakerState::Open { until: Instant::now() + self.open_for }
            }
            (BreakerState::Closed { failures }, true) => BreakerState::Closed { failures: failures + 1 },
            (open @ BreakerState::Open { .. }, true) => open,
        };
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, amount: i64, token: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.to_owned(),
            amount,
            currency: "EUR".to_owned(),
            payment_method_token: token.to_owned(),
        }
    }

    #[test]
    fn the_mock_declines_by_token_and_by_amount() {
        let settings = MockSettings { decline_amount_over: Some(10_000), ..MockSettings::default() };
        assert!(matches!(
            mock_decision(&request("o", 100, DECLINE_TOKEN), &settings),
            Ok(ChargeOutcome::Declined { .. })
        ));
        assert!(matches!(
            mock_decision(&request("o", 10_001, "tok_ok"), &settings),
            Ok(ChargeOutcome::Declined { .. })
        ));
        assert_eq!(
            mock_decision(&request("o", 10_000, "tok_ok"), &settings),
            Ok(ChargeOutcome::Captured { reference: "mock_ch_o".to_owned() })
        );
        assert!(mock_decision(&request("o", 1, UNAVAILABLE_TOKEN), &settings).is_err());
    }

    #[tokio::test]
    async fn a_repeated_key_returns_the_first_capture_and_takes_money_once() {
        let mock = MockProvider::new(MockSettings::default());
        let first = mock.charge(&request("order-1", 500, "tok_ok")).await.expect("charged");
        let again = mock.charge(&request("order-1", 500, "tok_ok")).await.expect("charged");
        assert_eq!(first, again);
        assert_eq!(mock.charges_taken_for("order-1"), 1);
        assert_eq!(mock.state().charges_taken, 1);
        assert_eq!(mock.state().calls, 2);
    }

    #[tokio::test]
    async fn a_lost_answer_hides_a_capture_that_a_void_reverses() {
        let mock = MockProvider::new(MockSettings::default());
        let lost = request("order-lost", 700, LOST_ANSWER_TOKEN);
        for _ in 0..2 {
            assert!(matches!(mock.charge(&lost).await, Err(ProviderError::Unavailable(_))));
        }
        assert!(mock.money_held_for("order-lost"), "the money was taken despite the errors");
        assert_eq!(mock.state().charges_taken, 1, "once");

        let reversed = mock.void(&lost).await.expect("voided");
        assert_eq!(reversed, VoidOutcome::Reversed { reference: "mock_void_order-lost".to_owned() });
        assert_eq!(mock.void(&lost).await.expect("voided again"), reversed, "idempotent");
        assert!(!mock.money_held_for("order-lost"));
        assert_eq!(mock.state().captures_reversed, 1);
    }

    #[tokio::test]
    async fn a_voided_key_never_takes_money_later() {
        let mock = MockProvider::new(MockSettings::default());
        assert_eq!(mock.void(&request("order-late", 700, "tok_ok")).await, Ok(VoidOutcome::NothingCharged));
        // A charge that was in flight when the order died arrives afterwards.
        let late = mock.charge(&request("order-late", 700, "tok_ok")).await.expect("answered");
        assert_eq!(late, ChargeOutcome::Declined { reason: "charge voided".to_owned() });
        assert!(!mock.money_held_for("order-late"));
        assert_eq!(mock.state().charges_taken, 0);
    }

    #[tokio::test]
    async fn a_mock_with_a_journal_remembers_its_charges_voids_and_refunds_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("commerce-mock-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("ledger.jsonl");
        let _ = std::fs::remove_file(&path);
        let refund = RefundRequest {
            idempotency_key: "refund-1".to_owned(),
            charge_reference: "mock_ch_order-kept".to_owned(),
            amount: 500,
            currency: "EUR".to_owned(),
        };
        {
            let mock = MockProvider::with_journal(MockSettings::default(), &path).expect("opened");
            mock.charge(&request("order-kept", 500, "tok_ok")).await.expect("charged");
            let lost = request("order-lost", 700, LOST_ANSWER_TOKEN);
            assert!(mock.charge(&lost).await.is_err());
            mock.void(&lost).await.expect("voided");
            mock.refund(&refund).await.expect("refunded");
        } // the process dies: the memory is gone
        let mock = MockProvider::with_journal(MockSettings::default(), &path).expect("reopened");
        assert_eq!(mock.state().charges_taken, 2, "both captures remembered");
        let again = mock.charge(&request("order-kept", 500, "tok_ok")).await.expect("answered");
        assert_eq!(again, ChargeOutcome::Captured { reference: "mock_ch_order-kept".to_owned() });
        let late = mock.charge(&request("order-lost", 700, "tok_ok")).await.expect("answered");
        assert_eq!(late, ChargeOutcome::Declined { reason: "charge voided".to_owned() }, "still voided");
        assert_eq!(mock.refund(&refund).await.expect("answered"), "mock_re_refund-1");
        assert_eq!(mock.state().charges_taken, 2, "no money taken again");
        let money = crate::journal::money_by_charge_key(&crate::journal::read(&path).expect("read"));
        assert_eq!(money.len(), 2, "{money:?}");
        assert_eq!((money["order-kept"].captures, money["order-kept"].net()), (1, 0), "captured, refunded");
        assert_eq!((money["order-lost"].captures, money["order-lost"].net()), (1, 0), "captured, reversed");
    }

    #[tokio::test]
    async fn the_switch_makes_the_mock_unavailable_until_switched_back() {
        let mock = MockProvider::new(MockSettings { start_unavailable: true, ..MockSettings::default() });
        assert!(matches!(mock.charge(&request("k", 1, "t")).await, Err(ProviderError::Unavailable(_))));
        mock.set_available(true);
        assert!(matches!(mock.charge(&request("k", 1, "t")).await, Ok(ChargeOutcome::Captured { .. })));
    }

    #[tokio::test]
    async fn the_admin_routes_switch_the_mock_from_outside_the_process() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let mock = Arc::new(MockProvider::new(MockSettings::default()));
        let call = |method: &str, path: &str| {
            Request::builder().method(method).uri(path).body(Body::empty()).expect("request")
        };
        let response = mock_routes(mock.clone())
            .oneshot(call("POST", "/mock-provider/unavailable"))
            .await
            .expect("served");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!mock.state().available);
        assert!(mock.charge(&request("k", 1, "t")).await.is_err());
        let response = mock_routes(mock.clone())
            .oneshot(call("POST", "/mock-provider/available"))
            .await
            .expect("served");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(mock.state().available);
        let response =
            mock_routes(mock.clone()).oneshot(call("GET", "/mock-provider")).await.expect("served");
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_consecutive_failures_and_probes_after_the_open_period() {
        let breaker = ProviderBreaker::new(2, Duration::from_secs(10));
        let down = || async { Err::<(), _>(ProviderError::Unavailable("down".to_owned())) };
        assert!(matches!(breaker.call(down()).await, Err(ProviderError::Unavailable(_))));
        assert!(!breaker.is_open());
        assert!(matches!(breaker.call(down()).await, Err(ProviderError::Unavailable(_))));
        assert!(breaker.is_open());
        assert!(matches!(breaker.call(async { Ok(()) }).await, Err(ProviderError::CircuitOpen { .. })));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(breaker.call(down()).await, Err(ProviderError::Unavailable(_))), "the probe failed");
        assert!(breaker.is_open(), "a failed probe re-opens");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(breaker.call(async { Ok(7) }).await, Ok(7));
        assert!(!breaker.is_open());
    }
}
