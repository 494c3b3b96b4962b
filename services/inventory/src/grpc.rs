//! The `commerce.inventory.v1.InventoryService` gRPC server: translates
//! proto requests into store operations (each in its own transaction, the
//! same operations the saga consumer uses) and the outcomes back into proto
//! messages. Errors become statuses in one place, `From<Error> for Status`.

use commerce_proto::time::timestamp;
use std::time::Duration;

use commerce_proto::inventory::v1 as pb;
use commerce_proto::inventory::v1::inventory_service_server::InventoryService;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Line, ReleaseReason, RuleError, StockLevel};
use crate::metrics::InventoryMetrics;
use crate::store::{
    self, Adjustment, Reservation, ReservationKey, ReserveOutcome, ReserveRequest, StockRow, Transition,
};
use crate::{Error, ReservationSettings};

/// Serves the inventory API over the service's database.
#[derive(Debug, Clone)]
pub struct InventoryGrpc {
    pool: PgPool,
    settings: ReservationSettings,
    metrics: InventoryMetrics,
}

impl InventoryGrpc {
    /// The API over the inventory database; `settings` bound reservation TTLs.
    pub fn new(pool: PgPool, settings: ReservationSettings) -> Self {
        Self { pool, settings, metrics: InventoryMetrics::default() }
    }

    /// Counts reservation outcomes into `metrics` (unregistered by default).
    pub fn with_metrics(mut self, metrics: InventoryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    async fn begin(&self, name: &'static str) -> Result<commerce_platform::db::Transaction, Error> {
        commerce_platform::db::begin(&self.pool, name).await.map_err(Error::BeginTransaction)
    }
}

fn stock_level(product_id: &str, row: Option<&StockRow>) -> pb::StockLevel {
    let level = row.map(|row| row.level).unwrap_or_default();
    pb::StockLevel {
        product_id: product_id.to_owned(),
        available: level.available,
        reserved: level.reserved,
        sold: level.sold,
        updated_at: row.map(|row| timestamp(row.updated_at)),
    }
}

fn reservation_message(reservation: &Reservation) -> pb::Reservation {
    pb::Reservation {
        id: reservation.id.to_string(),
        order_id: reservation.order_id.clone(),
        lines: reservation
            .lines
            .iter()
            .map(|line| pb::StockLine { product_id: line.product_id.clone(), quantity: line.quantity })
            .collect(),
        status: match reservation.status {
            domain::ReservationStatus::Held => pb::ReservationStatus::Held,
            domain::ReservationStatus::Committed => pb::ReservationStatus::Committed,
            domain::ReservationStatus::Released => pb::ReservationStatus::Released,
        } as i32,
        expires_at: Some(timestamp(reservation.expires_at)),
        created_at: Some(timestamp(reservation.created_at)),
        release_reason: match reservation.release_reason {
            None => pb::ReleaseReason::Unspecified,
            Some(ReleaseReason::Expired) => pb::ReleaseReason::Expired,
            Some(ReleaseReason::PaymentFailed) => pb::ReleaseReason::PaymentFailed,
            Some(ReleaseReason::Cancelled) => pb::ReleaseReason::Cancelled,
        } as i32,
    }
}

fn parse_reservation_id(text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text)
        .map_err(|_| Status::invalid_argument(format!("reservation_id {text:?} is not a UUID")))
}

fn require_product_id(product_id: &str) -> Result<(), Status> {
    if product_id.trim().is_empty() {
        return Err(Error::Validate(RuleError::EmptyProductId).into());
    }
    Ok(())
}

#[tonic::async_trait]
impl InventoryService for InventoryGrpc {
    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::GetStockResponse>, Status> {
        let product_id = request.into_inner().product_id;
        require_product_id(&product_id)?;
        let row = store::get_stock(&self.pool, &product_id).await?;
        Ok(Response::new(pb::GetStockResponse { stock: Some(stock_level(&product_id, row.as_ref())) }))
    }

    async fn check_availability(
        &self,
        request: Request<pb::CheckAvailabilityRequest>,
    ) -> Result<Response<pb::CheckAvailabilityResponse>, Status> {
        let lines = request.into_inner().lines;
        for line in &lines {
            require_product_id(&line.product_id)?;
        }
        if lines.len() > domain::MAX_LINES {
            return Err(Error::Validate(RuleError::TooManyLines { count: lines.len() }).into());
        }
        let ids: Vec<String> = lines.iter().map(|line| line.product_id.clone()).collect();
        let levels = store::stock_levels(&self.pool, &ids).await?;
        let answers: Vec<pb::LineAvailability> = lines
            .into_iter()
            .map(|line| {
                let available = levels.get(&line.product_id).map_or(0, |level: &StockLevel| level.available);
                pb::LineAvailability {
                    available: domain::is_available(line.quantity, available),
                    product_id: line.product_id,
                    requested: line.quantity,
                    available_quantity: available,
                }
            })
            .collect();
        let all_available = answers.iter().all(|line| line.available);
        Ok(Response::new(pb::CheckAvailabilityResponse { lines: answers, all_available }))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let request = request.into_inner();
        let requested_ttl = request
            .ttl
            .map(|ttl| {
                Duration::try_from(ttl).map_err(|_| Status::invalid_argument("ttl must not be negative"))
            })
            .transpose()?;
        let ttl = domain::reservation_ttl(requested_ttl, self.settings.default_ttl, self.settings.max_ttl);
        commerce_platform::telemetry::record_order_id(&request.order_id);
        let mut tx = self.begin("reserve stock").await?;
        let outcome = store::reserve(
            &mut tx,
            ReserveRequest {
                order_id: request.order_id,
                lines: request
                    .lines
                    .into_iter()
                    .map(|line| Line::new(line.product_id, line.quantity))
                    .collect(),
                ttl,
            },
        )
        .await?;
        tx.commit().await.map_err(Error::CommitTransaction)?;
        self.metrics.record(&outcome);
        let result = match outcome {
            ReserveOutcome::Reserved(reservation) | ReserveOutcome::AlreadyReserved(reservation) => {
                pb::reserve_response::Result::Reservation(reservation_message(&reservation))
            }
            ReserveOutcome::Rejected(shortfalls) | ReserveOutcome::AlreadyRejected(shortfalls) => {
                pb::reserve_response::Result::Rejected(pb::ReservationRejected {
                    shortfalls: shortfalls
                        .into_iter()
                        .map(|s| pb::Shortfall {
                            product_id: s.product_id,
                            requested: s.requested,
                            available: s.available,
                        })
                        .collect(),
                })
            }
        };
        Ok(Response::new(pb::ReserveResponse { result: Some(result) }))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        let id = parse_reservation_id(&request.into_inner().reservation_id)?;
        let reservation = self.move_reservation(id, Transition::Commit).await?;
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(reservation_message(&reservation)),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let request = request.into_inner();
        let id = parse_reservation_id(&request.reservation_id)?;
        let reason = match pb::ReleaseReason::try_from(request.reason) {
            Ok(pb::ReleaseReason::Expired) => ReleaseReason::Expired,
            Ok(pb::ReleaseReason::PaymentFailed) => ReleaseReason::PaymentFailed,
            Ok(pb::ReleaseReason::Cancelled) => ReleaseReason::Cancelled,
            _ => return Err(Status::invalid_argument("reason must be EXPIRED, PAYMENT_FAILED or CANCELLED")),
        };
        let reservation = self.move_reservation(id, Transition::Release(reason)).await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(reservation_message(&reservation)),
        }))
    }

    async fn restock(
        &self,
        request: Request<pb::RestockRequest>,
    ) -> Result<Response<pb::RestockResponse>, Status> {
        let request = request.into_inner();
        require_product_id(&request.product_id)?;
        let row =
            self.adjust(&request.product_id, Adjustment::Restock(request.quantity), &request.note).await?;
        Ok(Response::new(pb::RestockResponse { stock: Some(stock_level(&row.product_id, Some(&row))) }))
    }

    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::SetStockResponse>, Status> {
        let request = request.into_inner();
        require_product_id(&request.product_id)?;
        let row = self.adjust(&request.product_id, Adjustment::Set(request.available), &request.note).await?;
        Ok(Response::new(pb::SetStockResponse { stock: Some(stock_level(&row.product_id, Some(&row))) }))
    }

    async fn list_low_stock(
        &self,
        request: Request<pb::ListLowStockRequest>,
    ) -> Result<Response<pb::ListLowStockResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 20,
            1..=100 => i64::from(request.limit),
            _ => return Err(Status::invalid_argument("limit must be between 1 and 100")),
        };
        let rows = store::low_stock(&self.pool, request.max_available, limit).await?;
        let stock = rows.iter().map(|row| stock_level(&row.product_id, Some(row))).collect();
        Ok(Response::new(pb::ListLowStockResponse { stock }))
    }
}

impl InventoryGrpc {
    async fn move_reservation(&self, id: Uuid, transition: Transition) -> Result<Reservation, Error> {
        let mut tx = self.begin("move reservation").await?;
        let outcome = store::transition(&mut tx, ReservationKey::Id(id), transition)
            .await?
            .ok_or_else(|| Error::ReservationNotFound { reservation: id.to_string() })?;
        tx.commit().await.map_err(Error::CommitTransaction)?;
        Ok(outcome.reservation().clone())
    }

    async fn adjust(&self, product_id: &str, adjustment: Adjustment, note: &str) -> Result<StockRow, Error> {
        let mut tx = self.begin("adjust stock").await?;
        let row = store::adjust_stock(&mut tx, product_id, adjustment, note).await?;
        tx.commit().await.map_err(Error::CommitTransaction)?;
        Ok(row)
    }
}

/// One mapping from the crate's errors to gRPC statuses: broken rules are
/// the caller's (INVALID_ARGUMENT), a missing reservation NOT_FOUND, a
/// contradictory transition FAILED_PRECONDITION, a database that cannot be
/// reached UNAVAILABLE (retryable by the caller), anything else INTERNAL
/// with the details in the log, not in the answer.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::Validate(rule) => Status::invalid_argument(rule.to_string()),
            Error::ReservationNotFound { .. } => Status::not_found(error.to_string()),
            Error::ReservationState { .. } => Status::failed_precondition(error.to_string()),
            _ if error.is_unavailable() => {
                tracing::warn!(error = %crate::error_chain(&error), "database unavailable");
                Status::unavailable("the inventory database is unavailable; retry later")
            }
            _ => {
                tracing::error!(error = %crate::error_chain(&error), "inventory request failed");
                Status::internal("internal error")
            }
        }
    }
}
