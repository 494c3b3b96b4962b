//! The `PaymentService` gRPC server (admins, gateway, tests): direct charges
//! and refunds through the same locked paths as the saga's worker, and the
//! one `From<Error> for Status` mapping.

use commerce_proto::payment::v1 as pb;
use commerce_proto::payment::v1::payment_service_server::PaymentService;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::config::WebhookSecret;
use crate::domain::{self, PaymentStatus};
use crate::store::{self, Payment, Refund};
use crate::stripe::webhook;
use crate::worker::{ChargeAttempt, Worker};

/// The gRPC face of the payment service.
#[derive(Debug, Clone)]
pub struct PaymentGrpc {
    pool: PgPool,
    worker: Worker,
    /// Stripe's webhook signing secret, when its webhooks are on.
    stripe_webhook_secret: Option<WebhookSecret>,
}

fn money(currency: &str, units: i64) -> commerce_proto::common::v1::Money {
    commerce_proto::common::v1::Money { currency_code: currency.to_owned(), units }
}

fn status_to_proto(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Captured => pb::PaymentStatus::Captured,
        PaymentStatus::Declined => pb::PaymentStatus::Declined,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
        PaymentStatus::PartiallyRefunded => pb::PaymentStatus::PartiallyRefunded,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
        PaymentStatus::Cancelled => pb::PaymentStatus::Cancelled,
    }
}

fn refund_to_proto(refund: &Refund, currency: &str) -> pb::Refund {
    pb::Refund {
        id: refund.id.to_string(),
        payment_id: refund.payment_id.to_string(),
        amount: Some(money(currency, refund.amount)),
        reason: refund.reason.clone(),
        provider_reference: refund.provider_reference.clone(),
        idempotency_key: refund.idempotency_key.clone(),
        created_at: Some(timestamp(refund.created_at)),
    }
}

/// The proto view of a payment with its refunds.
pub fn payment_to_proto(payment: &Payment, refunds: &[Refund]) -> pb::Payment {
    pb::Payment {
        id: payment.id.to_string(),
        order_id: payment.order_id.clone(),
        user_id: payment.user_id.clone(),
        amount: Some(money(&payment.currency, payment.amount)),
        refunded_amount: Some(money(&payment.currency, payment.refunded)),
        status: status_to_proto(payment.status).into(),
        provider: payment.provider.clone(),
        provider_reference: payment.provider_reference.clone(),
        failure_reason: payment.failure_reason.clone(),
        refunds: refunds.iter().map(|refund| refund_to_proto(refund, &payment.currency)).collect(),
        created_at: Some(timestamp(payment.created_at)),
        updated_at: Some(timestamp(payment.updated_at)),
    }
}

fn invalid(field: &'static str, problem: &'static str) -> Error {
    Error::InvalidRequest { field, problem }
}

impl PaymentGrpc {
    pub fn new(pool: PgPool, worker: Worker) -> Self {
        Self { pool, worker, stripe_webhook_secret: None }
    }

    /// Accepts Stripe's webhooks signed with `secret`.
    pub fn with_stripe_webhooks(mut self, secret: Option<WebhookSecret>) -> Self {
        self.stripe_webhook_secret = secret;
        self
    }

    /// Verifies a delivery and makes the payment it names due again.
    async fn receive_webhook(
        &self,
        request: pb::ReceiveProviderWebhookRequest,
    ) -> Result<pb::ReceiveProviderWebhookResponse, Status> {
        if request.provider != "stripe" {
            return Err(Status::failed_precondition(format!(
                "no webhooks for payment provider {:?}; only \"stripe\" sends them",
                request.provider
            )));
        }
        let Some(secret) = &self.stripe_webhook_secret else {
            return Err(Status::failed_precondition(
                "Stripe webhooks are off: the payment service has no webhook signing secret",
            ));
        };
        let now = chrono::Utc::now().timestamp();
        let event = webhook::verify(
            &request.payload,
            &request.signature,
            &secret.0,
            now,
            webhook::DEFAULT_TOLERANCE_SECS,
        )
        .map_err(|error| match error {
            webhook::WebhookError::NotAnEvent(_) => Status::invalid_argument(error.to_string()),
            _ => Status::unauthenticated(error.to_string()),
        })?;
        let payment_due = match &event.order_id {
            Some(order_id) => {
                let mut conn = self.pool.acquire().await.map_err(Error::UpdatePayment)?;
                store::make_due_now(&mut conn, order_id).await?
            }
            None => false,
        };
        tracing::info!(
            event_id = %event.id,
            event_type = %event.kind,
            object = %event.object_id,
            order_id = event.order_id.as_deref().unwrap_or_default(),
            payment_due,
            "Stripe webhook received"
        );
        Ok(pb::ReceiveProviderWebhookResponse { event_id: event.id, event_type: event.kind, payment_due })
    }

    async fn load(&self, id: Option<Uuid>, order_id: Option<&str>) -> Result<pb::Payment, Error> {
        let mut conn = self.pool.acquire().await.map_err(Error::LoadPayment)?;
        let payment = store::find(&mut conn, id, order_id).await?.ok_or(Error::PaymentNotFound)?;
        let refunds = store::refunds_of(&mut conn, payment.id).await?;
        Ok(payment_to_proto(&payment, &refunds))
    }

    async fn charge(&self, request: pb::ChargeRequest) -> Result<pb::Payment, Error> {
        if request.order_id.is_empty() {
            return Err(invalid("order_id", "is empty"));
        }
        let amount = request.amount.clone().ok_or(invalid("amount", "is missing"))?;
        if amount.units <= 0 || amount.currency_code.is_empty() {
            return Err(invalid("amount", "must be positive with a currency"));
        }
        if request.payment_method_token.is_empty() {
            return Err(invalid("payment_method_token", "is empty"));
        }
        commerce_platform::telemetry::record_order_id(&request.order_id);
        let mut tx =
            commerce_platform::db::begin(&self.pool, "update payment").await.map_err(Error::UpdatePayment)?;
        store::record_intent(
            &mut tx,
            &request.order_id,
            &request.user_id,
            &amount.currency_code,
            amount.units,
            &request.payment_method_token,
        )
        .await?;
        // A direct charge has no reservation to wait for.
        store::record_stock_reserved(&mut tx, &request.order_id).await?;
        tx.commit().await.map_err(Error::UpdatePayment)?;

        let mut tx =
            commerce_platform::db::begin(&self.pool, "update payment").await.map_err(Error::UpdatePayment)?;
        let payment =
            store::lock_by_order(&mut tx, &request.order_id).await?.ok_or(Error::PaymentNotFound)?;
        let attempt = self.worker.charge_locked(&mut tx, &payment).await?;
        tx.commit().await.map_err(Error::UpdatePayment)?;
        if let ChargeAttempt::Deferred(error) = attempt {
            return Err(Error::ReachProvider(Box::new(error)));
        }
        self.load(None, Some(&request.order_id)).await
    }

    async fn refund(&self, request: pb::RefundRequest) -> Result<(pb::Payment, pb::Refund), Error> {
        let payment_id =
            Uuid::parse_str(&request.payment_id).map_err(|_| invalid("payment_id", "is not a UUID"))?;
        if request.idempotency_key.is_empty() {
            return Err(invalid("idempotency_key", "is empty"));
        }
        let mut tx =
            commerce_platform::db::begin(&self.pool, "refund payment").await.map_err(Error::UpdateRefund)?;
        let payment = store::lock_by_id(&mut tx, payment_id).await?.ok_or(Error::PaymentNotFound)?;
        let refund = match store::find_refund_by_key(&mut tx, payment_id, &request.idempotency_key).await? {
            Some(existing) => existing,
            None => {
                let committed = store::committed_refunds(&mut tx, payment_id).await?;
                let requested = match &request.amount {
                    Some(amount) if amount.currency_code != payment.currency => {
                        return Err(invalid("amount", "is not in the payment's currency"));
                    }
                    Some(amount) => Some(amount.units),
                    None => None,
                };
                let amount = domain::refund_amount(payment.status, payment.amount, committed, requested)
                    .map_err(Error::RefuseRefund)?;
                store::insert_refund(&mut tx, payment_id, amount, &request.reason, &request.idempotency_key)
                    .await?
            }
        };
        tx.commit().await.map_err(Error::UpdateRefund)?;

        let mut tx =
            commerce_platform::db::begin(&self.pool, "refund payment").await.map_err(Error::UpdateRefund)?;
        let refund = store::lock_refund(&mut tx, refund.id).await?.ok_or(Error::RefundNotFound)?;
        let made = self.worker.refund_locked(&mut tx, &refund).await?;
        tx.commit().await.map_err(Error::UpdateRefund)?;
        let refund = made.map_err(|error| Error::ReachProvider(Box::new(error)))?;
        let payment = self.load(Some(payment_id), None).await?;
        let refund = refund_to_proto(&refund, &payment.amount.clone().unwrap_or_default().currency_code);
        Ok((payment, refund))
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let payment = PaymentGrpc::charge(self, request.into_inner()).await?;
        Ok(Response::new(pb::ChargeResponse { payment: Some(payment) }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let payment = match request.into_inner().lookup {
            Some(pb::get_payment_request::Lookup::PaymentId(id)) => {
                let id = Uuid::parse_str(&id).map_err(|_| invalid("payment_id", "is not a UUID"))?;
                self.load(Some(id), None).await?
            }
            Some(pb::get_payment_request::Lookup::OrderId(order_id)) => {
                self.load(None, Some(&order_id)).await?
            }
            None => return Err(invalid("lookup", "give payment_id or order_id").into()),
        };
        Ok(Response::new(pb::GetPaymentResponse { payment: Some(payment) }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let (payment, refund) = PaymentGrpc::refund(self, request.into_inner()).await?;
        Ok(Response::new(pb::RefundResponse { payment: Some(payment), refund: Some(refund) }))
    }

    async fn receive_provider_webhook(
        &self,
        request: Request<pb::ReceiveProviderWebhookRequest>,
    ) -> Result<Response<pb::ReceiveProviderWebhookResponse>, Status> {
        Ok(Response::new(self.receive_webhook(request.into_inner()).await?))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            Error::PaymentNotFound | Error::RefundNotFound => Status::not_found(message),
            Error::RefuseRefund(_) => Status::failed_precondition(message),
            Error::ReachProvider(_) => Status::unavailable(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "payment request failed");
                Status::internal("internal error")
            }
        }
    }
}
