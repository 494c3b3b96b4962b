//! The saga's heart in process: the real order and payment services (each
//! with its own database) on real Kafka, with inventory's StockReserved
//! published by the test. Checks that an order is confirmed with exactly one
//! capture, that a decline fails it, that an unavailable provider only
//! delays it, and that cancelling a paid order refunds it.

mod support;

use commerce_proto::events::v1 as ev;
use commerce_proto::order::v1 as pb;
use commerce_proto::payment::v1::PaymentStatus;
use support::catalog::{self, product};
use support::harness::{OrderService, PaymentService, place_request, timestamp_in};
use support::{count_events, drop_kafka_namespace, eventually, http, init_logging, kafka_namespace, publish};
use tokio_util::sync::CancellationToken;

struct Env {
    prefix: String,
    order: OrderService,
    payment: PaymentService,
    catalog_stop: CancellationToken,
}

async fn env(payment_flags: &[&str]) -> anyhow::Result<Env> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let catalog_stop = CancellationToken::new();
    let catalog_port = catalog::start(vec![product("apple", 150, true)], catalog_stop.clone()).await?;
    let order = OrderService::start(&prefix, catalog_port).await?;
    let payment = PaymentService::start(&prefix, payment_flags).await?;
    Ok(Env { prefix, order, payment, catalog_stop })
}

impl Env {
    async fn stop(self) -> anyhow::Result<()> {
        self.catalog_stop.cancel();
        self.payment.stop().await?;
        self.order.stop().await?;
        drop_kafka_namespace(&self.prefix).await;
        Ok(())
    }

    /// Places an order and publishes inventory's StockReserved for it.
    async fn place_and_reserve(&self, key: &str, token: &str) -> anyhow::Result<pb::Order> {
        self.place_and_reserve_for(key, token, 900).await
    }

    /// Places an order and publishes a reservation lapsing in `seconds`.
    async fn place_and_reserve_for(&self, key: &str, token: &str, seconds: i64) -> anyhow::Result<pb::Order> {
        let order = self
            .order
            .client
            .clone()
            .place_order(place_request("buyer", key, &[("apple", 2)], token))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| anyhow::anyhow!("no order"))?;
        publish(
            &self.prefix,
            &ev::StockReserved {
                order_id: order.id.clone(),
                reservation_id: format!("res-{}", order.id),
                lines: vec![ev::stock_reserved::Line { product_id: "apple".to_owned(), quantity: 2 }],
                expires_at: Some(timestamp_in(seconds)),
                occurred_at: Some(timestamp_in(0)),
            },
        )
        .await?;
        Ok(order)
    }

    async fn wait_for_payment(
        &self,
        order_id: &str,
        status: PaymentStatus,
    ) -> anyhow::Result<commerce_proto::payment::v1::Payment> {
        eventually(&format!("payment of {order_id} to be {status:?}"), || async move {
            Ok(self.payment.payment_of(order_id).await?.filter(|payment| payment.status() == status))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_order_is_captured_exactly_once_and_confirmed() -> anyhow::Result<()> {
    let env = env(&[]).await?;
    let order = env.place_and_reserve("happy", "tok_ok").await?;
    let confirmed = env.order.wait_for_status(&order.id, pb::OrderStatus::Confirmed).await?;
    let payment = env.wait_for_payment(&order.id, PaymentStatus::Captured).await?;
    assert_eq!(confirmed.payment_id, payment.id);
    assert_eq!(
        payment.amount.as_ref().map(|amount| amount.units),
        Some(300),
        "the order's total, from the catalog"
    );
    assert_eq!(env.payment.mock.charges_taken_for(&order.id), 1);
    eventually("one PaymentCaptured and one OrderConfirmed", || async {
        let captured = count_events::<ev::PaymentCaptured>(&env.prefix, &order.id).await?;
        let confirmed = count_events::<ev::OrderConfirmed>(&env.prefix, &order.id).await?;
        anyhow::ensure!(
            captured <= 1 && confirmed <= 1,
            "duplicates: {captured} captured, {confirmed} confirmed"
        );
        Ok((captured == 1 && confirmed == 1).then_some(()))
    })
    .await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_fails_the_order_and_charges_nothing() -> anyhow::Result<()> {
    let env = env(&[]).await?;
    let order = env.place_and_reserve("declined", "tok_decline").await?;
    let failed = env.order.wait_for_status(&order.id, pb::OrderStatus::Failed).await?;
    assert!(failed.failure_reason.contains("declined"), "{}", failed.failure_reason);
    env.wait_for_payment(&order.id, PaymentStatus::Declined).await?;
    assert_eq!(env.payment.mock.charges_taken_for(&order.id), 0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_provider_keeps_the_order_waiting_until_it_returns_then_charges_once()
-> anyhow::Result<()> {
    let env = env(&["--mock-start-unavailable"]).await?;
    let order = env.place_and_reserve("outage", "tok_ok").await?;
    env.order.wait_for_status(&order.id, pb::OrderStatus::Reserved).await?;
    // Several attempts fail while the provider is away; the payment stays
    // pending and the order waits.
    eventually("several failed charge attempts", || async {
        let calls = env.payment.mock.state().calls;
        Ok((calls >= 3).then_some(()))
    })
    .await?;
    let pending = env.payment.payment_of(&order.id).await?.expect("a payment row");
    assert_eq!(pending.status(), PaymentStatus::Pending);
    assert_eq!(env.order.get(&order.id).await?.status(), pb::OrderStatus::Reserved);

    // Switched back on the way an end-to-end test driving a separate
    // process does: the admin port.
    let (status, body) = http(env.payment.admin_port, "POST", "/mock-provider/available").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"available\":true"), "{body}");
    env.order.wait_for_status(&order.id, pb::OrderStatus::Confirmed).await?;
    env.wait_for_payment(&order.id, PaymentStatus::Captured).await?;
    assert_eq!(env.payment.mock.charges_taken_for(&order.id), 1);
    assert_eq!(env.payment.mock.state().charges_taken, 1);
    let (_, metrics) = http(env.payment.admin_port, "GET", "/metrics").await?;
    assert!(metrics.contains("commerce_payment_charge_attempts_total{outcome=\"deferred\"}"), "{metrics}");
    assert!(metrics.contains("commerce_payment_charge_attempts_total{outcome=\"captured\"} 1"), "{metrics}");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paid_order_refunds_it_and_the_order_shows_the_refund() -> anyhow::Result<()> {
    let env = env(&[]).await?;
    let order = env.place_and_reserve("cancel", "tok_ok").await?;
    env.order.wait_for_status(&order.id, pb::OrderStatus::Confirmed).await?;
    let cancelled = env
        .order
        .client
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            id: order.id.clone(),
            reason: "changed my mind".to_owned(),
            user_id: "buyer".to_owned(),
        })
        .await?
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    let refunded = env.wait_for_payment(&order.id, PaymentStatus::Refunded).await?;
    assert_eq!(refunded.refunds.len(), 1);
    assert_eq!(refunded.refunded_amount.as_ref().map(|amount| amount.units), Some(300));
    eventually("the order to show the refund", || async {
        Ok(env.order.get(&order.id).await?.refunded.then_some(()))
    })
    .await?;
    assert_eq!(count_events::<ev::PaymentRefunded>(&env.prefix, &order.id).await?, 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_lapsing_while_the_provider_is_away_fails_the_order_and_nothing_is_ever_charged()
-> anyhow::Result<()> {
    let env = env(&["--mock-start-unavailable"]).await?;
    let order = env.place_and_reserve_for("lapse", "tok_ok", 2).await?;
    let failed = env.order.wait_for_status(&order.id, pb::OrderStatus::Failed).await?;
    assert!(failed.failure_reason.contains("expired"), "{}", failed.failure_reason);
    env.wait_for_payment(&order.id, PaymentStatus::Cancelled).await?;

    env.payment.mock.set_available(true);
    // Another order charged after the provider returned proves the worker
    // ran with the provider up; the cancelled payment was not among its work.
    let later = env.place_and_reserve("later", "tok_ok").await?;
    env.order.wait_for_status(&later.id, pb::OrderStatus::Confirmed).await?;
    assert_eq!(env.payment.mock.charges_taken_for(&order.id), 0);
    assert_eq!(env.payment.mock.state().charges_taken, 1, "only the later order was charged");
    assert_eq!(env.payment.payment_of(&order.id).await?.map(|p| p.status()), Some(PaymentStatus::Cancelled));
    assert_eq!(env.order.get(&order.id).await?.status(), pb::OrderStatus::Failed);
    env.stop().await
}
