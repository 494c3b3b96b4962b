//! The Stripe adapter against stripe-mock, Stripe's official mock: every
//! call it makes is one Stripe's OpenAPI document accepts, at the pinned API
//! version. Then its flows (idempotent replays, declines, lost answers,
//! voids, refunds, the worker with a real Postgres) against
//! [`commerce_testkit::stripe_ledger`], which passes each request through stripe-mock
//! first and keeps the PaymentIntents' state that stripe-mock does not.

mod support;

use std::sync::Arc;
use std::time::Duration;

use commerce_payment::config::WebhookSecret;
use commerce_payment::domain::PaymentStatus;
use commerce_payment::grpc::PaymentGrpc;
use commerce_payment::provider::ProviderBreaker;
use commerce_payment::provider::{
    ChargeOutcome, ChargeRequest, PaymentProvider, ProviderError, RefundRequest, VoidOutcome,
};
use commerce_payment::stripe::webhook;
use commerce_payment::stripe::{StripeProvider, StripeSettings};
use commerce_payment::worker::{Worker, WorkerSettings};
use commerce_proto::payment::v1 as pb;
use commerce_proto::payment::v1::payment_service_server::PaymentService as _;
use commerce_testkit::stripe_ledger::{DECLINED_PAYMENT_METHOD, PROCESSING_PAYMENT_METHOD, StripeLedger};
use commerce_testkit::stripe_mock::StripeMock;
use support::{database, intent_and_stock, outbox_count, payment, worker};

fn stripe(api_base: &str, secret_key: &str) -> anyhow::Result<StripeProvider> {
    Ok(StripeProvider::new(StripeSettings {
        api_base: api_base.to_owned(),
        secret_key: secret_key.to_owned(),
        timeout: Duration::from_secs(10),
    })?)
}

fn charge(order_id: &str, payment_method: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: order_id.to_owned(),
        amount: 1234,
        currency: "EUR".to_owned(),
        payment_method_token: payment_method.to_owned(),
    }
}

/// A ledger validated by a stripe-mock of its own, and the adapter on it.
async fn ledger() -> anyhow::Result<(StripeMock, StripeLedger, StripeProvider)> {
    let mock = StripeMock::start()?;
    let (ledger, url) = StripeLedger::start(mock.url()).await?;
    let provider = stripe(&url, "sk_test_ledger")?;
    Ok((mock, ledger, provider))
}

#[tokio::test]
async fn every_call_the_adapter_makes_is_one_stripes_api_accepts() -> anyhow::Result<()> {
    let mock = StripeMock::start()?;
    let stripe = stripe(&mock.url(), "sk_test_123")?;
    let created = stripe.create_intent(&charge("order-spec", "pm_card_visa")).await?;
    assert!(created.value.id.starts_with("pi_"), "{:?}", created.value);
    assert!(!created.replayed, "stripe-mock never replays");
    let id = created.value.id;
    assert_eq!(stripe.retrieve_intent(&id).await?.id, id);
    assert_eq!(stripe.confirm_intent(&id, "order-spec").await?.value.id, id);
    assert_eq!(stripe.capture_intent(&id, "order-spec").await?.value.id, id);
    assert_eq!(stripe.cancel_intent(&id, "order-spec").await?.value.id, id);
    let refund = stripe.create_refund(&id, 500, "refund-spec").await?.value;
    assert!(refund.id.starts_with("re_"), "{refund:?}");

    // stripe-mock's fixture PaymentIntent carries a recorded payment error
    // and waits for a payment method: read as Stripe means it, a decline.
    let outcome = stripe.charge(&charge("order-fixture", "pm_card_visa")).await;
    assert!(
        matches!(&outcome, Ok(ChargeOutcome::Declined { reason }) if reason.starts_with("card declined")),
        "{outcome:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_stripe_does_not_accept_makes_the_provider_unavailable_rather_than_declining_the_card()
-> anyhow::Result<()> {
    let mock = StripeMock::start()?;
    let stripe = stripe(&mock.url(), "not-a-key")?;
    let outcome = stripe.charge(&charge("order-key", "pm_card_visa")).await;
    assert!(
        matches!(&outcome, Err(ProviderError::Unavailable(message)) if message.contains("HTTP 401")),
        "{outcome:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_charge_is_authorised_then_captured_once_and_a_repeat_returns_it_without_taking_money_again()
-> anyhow::Result<()> {
    let (_mock, ledger, stripe) = ledger().await?;
    let first = stripe.charge(&charge("order-once", "pm_card_visa")).await?;
    let ChargeOutcome::Captured { reference } = &first else { panic!("{first:?}") };
    assert!(reference.starts_with("pi_"), "{reference}");
    assert_eq!(
        ledger.calls(),
        [
            "POST /v1/payment_intents",
            &format!("POST /v1/payment_intents/{reference}/confirm"),
            &format!("POST /v1/payment_intents/{reference}/capture"),
        ]
    );
    let again = stripe.charge(&charge("order-once", "pm_card_visa")).await?;
    assert_eq!(again, first);
    assert_eq!(ledger.money_held_for("order-once"), 1234, "taken once");
    assert_eq!(ledger.statuses_of("order-once"), ["succeeded"], "one PaymentIntent");
    Ok(())
}

#[tokio::test]
async fn a_declined_card_is_declined_with_stripes_message_and_stays_declined() -> anyhow::Result<()> {
    let (_mock, ledger, stripe) = ledger().await?;
    for _ in 0..2 {
        let outcome = stripe.charge(&charge("order-declined", DECLINED_PAYMENT_METHOD)).await?;
        assert_eq!(
            outcome,
            ChargeOutcome::Declined { reason: "card declined: Your card was declined.".to_owned() }
        );
    }
    assert_eq!(ledger.money_held_for("order-declined"), 0);
    Ok(())
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_finished_by_the_retry_from_where_stripe_is() -> anyhow::Result<()>
{
    let (_mock, ledger, stripe) = ledger().await?;
    for (order, step) in [("order-lost-confirm", "/confirm"), ("order-lost-capture", "/capture")] {
        ledger.lose_next_answer(step);
        let lost = stripe.charge(&charge(order, "pm_card_visa")).await;
        assert!(matches!(lost, Err(ProviderError::Unavailable(_))), "{order}: {lost:?}");
        let retried = stripe.charge(&charge(order, "pm_card_visa")).await?;
        assert!(matches!(retried, ChargeOutcome::Captured { .. }), "{order}: {retried:?}");
        assert_eq!(ledger.money_held_for(order), 1234, "{order}: taken once");
        assert_eq!(ledger.statuses_of(order), ["succeeded"], "{order}: one PaymentIntent");
    }
    Ok(())
}

#[tokio::test]
async fn a_void_leaves_no_money_with_stripe_whatever_the_lost_call_did_and_a_late_charge_takes_none()
-> anyhow::Result<()> {
    let (_mock, ledger, stripe) = ledger().await?;

    // Captured, answer lost: the void refunds it in full.
    ledger.lose_next_answer("/capture");
    assert!(stripe.charge(&charge("order-void-captured", "pm_card_visa")).await.is_err());
    assert_eq!(ledger.money_held_for("order-void-captured"), 1234);
    let void = stripe.void(&charge("order-void-captured", "pm_card_visa")).await?;
    assert!(matches!(&void, VoidOutcome::Reversed { reference } if reference.starts_with("re_")), "{void:?}");
    assert_eq!(stripe.void(&charge("order-void-captured", "pm_card_visa")).await?, void, "idempotent");
    assert_eq!(ledger.money_held_for("order-void-captured"), 0);

    // Authorised, answer lost: the void releases the authorisation, and a
    // retry of the charge afterwards takes nothing.
    ledger.lose_next_answer("/confirm");
    assert!(stripe.charge(&charge("order-void-held", "pm_card_visa")).await.is_err());
    let void = stripe.void(&charge("order-void-held", "pm_card_visa")).await?;
    assert!(matches!(&void, VoidOutcome::Reversed { reference } if reference.starts_with("pi_")), "{void:?}");
    let late = stripe.charge(&charge("order-void-held", "pm_card_visa")).await?;
    assert_eq!(late, ChargeOutcome::Declined { reason: "charge voided (abandoned)".to_owned() });
    assert_eq!(ledger.statuses_of("order-void-held"), ["canceled"]);

    // Never reached Stripe: the void creates the intent unconfirmed and
    // cancels it, so a charge arriving late finds it cancelled.
    assert_eq!(stripe.void(&charge("order-void-never", "pm_card_visa")).await?, VoidOutcome::NothingCharged);
    let late = stripe.charge(&charge("order-void-never", "pm_card_visa")).await?;
    assert!(matches!(late, ChargeOutcome::Declined { .. }), "{late:?}");
    assert_eq!(ledger.money_held_for("order-void-never"), 0);
    assert_eq!(ledger.statuses_of("order-void-never"), ["canceled"]);
    Ok(())
}

#[tokio::test]
async fn a_refund_is_made_once_per_key() -> anyhow::Result<()> {
    let (_mock, ledger, stripe) = ledger().await?;
    let ChargeOutcome::Captured { reference } =
        stripe.charge(&charge("order-refund", "pm_card_visa")).await?
    else {
        panic!("not captured")
    };
    let refund = RefundRequest {
        idempotency_key: "refund-1".to_owned(),
        charge_reference: reference,
        amount: 234,
        currency: "EUR".to_owned(),
    };
    let made = stripe.refund(&refund).await?;
    assert!(made.starts_with("re_"), "{made}");
    assert_eq!(stripe.refund(&refund).await?, made, "the same refund");
    assert_eq!(ledger.money_held_for("order-refund"), 1000);
    Ok(())
}

#[tokio::test]
async fn the_worker_charges_through_stripe_once_even_when_the_answer_is_lost() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let (_mock, ledger, stripe) = ledger().await?;
    let worker = worker(&pool, Arc::new(stripe));
    intent_and_stock(&pool, "order-worker", "pm_card_visa").await?;

    ledger.lose_next_answer("/capture");
    assert!(worker.charge_next().await?, "the first attempt ran");
    assert_eq!(payment(&pool, "order-worker").await?.status, PaymentStatus::Pending, "the outcome was lost");
    assert!(worker.charge_next().await?, "the retry ran");
    let captured = payment(&pool, "order-worker").await?;
    assert_eq!(captured.status, PaymentStatus::Captured);
    assert_eq!(captured.provider, "stripe");
    assert!(captured.provider_reference.starts_with("pi_"), "{}", captured.provider_reference);
    assert_eq!(ledger.money_held_for("order-worker"), 1234, "taken once");
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentCaptured").await?, 1);

    pool.close().await;
    database.drop_database().await
}

/// A signed delivery of a Stripe event about `order_id`'s PaymentIntent.
fn delivery(order_id: &str, secret: &str) -> pb::ReceiveProviderWebhookRequest {
    let payload = serde_json::json!({
        "id": "evt_ledger1",
        "object": "event",
        "type": "payment_intent.amount_capturable_updated",
        "data": { "object": { "id": "pi_x", "object": "payment_intent", "metadata": { "order_id": order_id } } }
    })
    .to_string();
    let signature = webhook::sign(payload.as_bytes(), secret, chrono::Utc::now().timestamp());
    pb::ReceiveProviderWebhookRequest {
        provider: "stripe".to_owned(),
        payload: payload.into_bytes(),
        signature,
    }
}

#[tokio::test]
async fn a_payment_stripe_settles_later_is_charged_when_its_signed_webhook_arrives_not_at_its_retry()
-> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let (_mock, ledger, stripe) = ledger().await?;
    // Retries half a minute apart: only the webhook can make it due sooner.
    // A breaker that opens at the first failure: had it counted the
    // `processing` answer as one, the charge after the webhook would be
    // refused by it.
    let settings = WorkerSettings {
        poll_interval: Duration::from_millis(10),
        retry_base: Duration::from_secs(30),
        retry_cap: Duration::from_secs(30),
    };
    let worker = Worker::new(
        pool.clone(),
        Arc::new(stripe),
        ProviderBreaker::new(1, Duration::from_secs(60)),
        settings,
    );
    let secret = "whsec_ledger";
    let grpc = PaymentGrpc::new(pool.clone(), worker.clone())
        .with_stripe_webhooks(Some(WebhookSecret(secret.to_owned())));
    intent_and_stock(&pool, "order-later", PROCESSING_PAYMENT_METHOD).await?;

    assert!(worker.charge_next().await?, "the first attempt ran");
    let waiting = payment(&pool, "order-later").await?;
    assert_eq!(waiting.status, PaymentStatus::Pending);
    assert!(waiting.failure_reason.contains("processing"), "{}", waiting.failure_reason);
    assert!(!worker.charge_next().await?, "the retry is half a minute away");

    ledger.settle("order-later");
    let forged =
        grpc.receive_provider_webhook(tonic::Request::new(delivery("order-later", "whsec_forged"))).await;
    assert_eq!(forged.err().map(|status| status.code()), Some(tonic::Code::Unauthenticated));
    assert!(!worker.charge_next().await?, "a forged delivery makes nothing due");

    let receipt = grpc
        .receive_provider_webhook(tonic::Request::new(delivery("order-later", secret)))
        .await?
        .into_inner();
    assert_eq!(receipt.event_id, "evt_ledger1");
    assert!(receipt.payment_due, "{receipt:?}");
    assert!(worker.charge_next().await?, "due at once");
    let captured = payment(&pool, "order-later").await?;
    assert_eq!(captured.status, PaymentStatus::Captured);
    assert_eq!(ledger.money_held_for("order-later"), 1234);
    let again = grpc
        .receive_provider_webhook(tonic::Request::new(delivery("order-later", secret)))
        .await?
        .into_inner();
    assert!(!again.payment_due, "a repeated delivery finds nothing waiting");

    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn webhooks_are_refused_when_the_service_has_no_signing_secret() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let (_mock, _ledger, stripe) = ledger().await?;
    let grpc = PaymentGrpc::new(pool.clone(), worker(&pool, Arc::new(stripe)));
    let refused = grpc.receive_provider_webhook(tonic::Request::new(delivery("order-x", "whsec_any"))).await;
    let status = refused.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("no webhook signing secret"), "{}", status.message());
    pool.close().await;
    database.drop_database().await
}
