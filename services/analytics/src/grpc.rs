//! The `AnalyticsService` gRPC server: periods and groupings checked, the
//! tables' figures in proto, and the dead-letter counts from the brokers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_platform::events::{KafkaArgs, TopicNames};
use commerce_proto::analytics::v1 as pb;
use commerce_proto::analytics::v1::analytics_service_server::AnalyticsService;
use commerce_proto::common::v1::Money;
use commerce_proto::time::{from_timestamp, timestamp};
use commerce_topology::Service;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::store::{self, Grouping};

/// The longest period a report covers.
const MAX_PERIOD_DAYS: i64 = 366;
/// Most stuck orders the dashboard lists.
const STUCK_LIMIT: i64 = 50;
/// How long the dashboard waits for the brokers' answer about one
/// dead-letter topic.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The gRPC face of the analytics service.
#[derive(Clone)]
pub struct AnalyticsGrpc {
    pool: PgPool,
    /// Asks the brokers how many records each dead-letter topic holds;
    /// `None` when it could not be created (the dashboard then says so).
    brokers: Option<Arc<BaseConsumer>>,
    names: TopicNames,
}

impl std::fmt::Debug for AnalyticsGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticsGrpc").field("names", &self.names).finish_non_exhaustive()
    }
}

impl AnalyticsGrpc {
    pub fn new(pool: PgPool, kafka: &KafkaArgs) -> Self {
        // A consumer that never joins a group: it only asks for watermarks.
        let brokers = kafka
            .client_config()
            .set("group.id", format!("{}-dashboard", Service::Analytics.consumer_group()))
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>();
        let brokers = match brokers {
            Ok(consumer) => Some(Arc::new(consumer)),
            Err(error) => {
                tracing::warn!(error = %error, "cannot create the client that counts dead letters");
                None
            }
        };
        Self { pool, brokers, names: kafka.names() }
    }

    /// Records on each consuming service's dead-letter topic, and whether
    /// every topic answered.
    async fn dead_letters(&self) -> (Vec<pb::DeadLetters>, bool) {
        let Some(brokers) = self.brokers.clone() else {
            return (Vec::new(), false);
        };
        let topics: Vec<(Service, String)> = Service::ALL
            .into_iter()
            .filter(|service| !service.spec().consumes.is_empty())
            .map(|service| (service, self.names.dead_letter_topic(service)))
            .collect();
        let counted = tokio::task::spawn_blocking(move || {
            let mut complete = true;
            let mut counts = Vec::with_capacity(topics.len());
            for (service, topic) in topics {
                // One partition (DEAD_LETTER_PARTITIONS): the low watermark
                // moves with retention, the high one with each record.
                match brokers.fetch_watermarks(&topic, 0, WATERMARK_TIMEOUT) {
                    Ok((low, high)) => counts.push(pb::DeadLetters {
                        service: service.name().to_owned(),
                        topic,
                        count: (high - low).max(0),
                    }),
                    Err(error) => {
                        tracing::debug!(topic, error = %error, "no watermarks for a dead-letter topic");
                        complete = false;
                    }
                }
            }
            (counts, complete)
        })
        .await;
        counted.unwrap_or_else(|_| (Vec::new(), false))
    }
}

/// `[from, to)` of a request, checked.
fn period(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Error> {
    let from = from
        .and_then(from_timestamp)
        .ok_or(Error::InvalidRequest { field: "from", problem: "is missing or not a time" })?;
    let to = to
        .and_then(from_timestamp)
        .ok_or(Error::InvalidRequest { field: "to", problem: "is missing or not a time" })?;
    if to <= from {
        return Err(Error::InvalidRequest { field: "to", problem: "must be after from" });
    }
    if to - from > chrono::Duration::days(MAX_PERIOD_DAYS) {
        return Err(Error::InvalidRequest { field: "to", problem: "must be at most 366 days after from" });
    }
    Ok((from, to))
}

/// `part / whole`, 0 for an empty whole.
fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsGrpc {
    async fn get_sales(
        &self,
        request: Request<pb::GetSalesRequest>,
    ) -> Result<Response<pb::GetSalesResponse>, Status> {
        let request = request.into_inner();
        let (from, to) = period(request.from.as_ref(), request.to.as_ref())?;
        let grouping = match pb::SalesGrouping::try_from(request.group_by) {
            Ok(pb::SalesGrouping::Unspecified | pb::SalesGrouping::Day) => Grouping::Day,
            Ok(pb::SalesGrouping::Product) => Grouping::Product,
            Ok(pb::SalesGrouping::Category) => Grouping::Category,
            Err(_) => {
                return Err(Error::InvalidRequest { field: "group_by", problem: "is not a grouping" }.into());
            }
        };
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let rows = store::sales(&mut conn, from, to, grouping).await?;
        Ok(Response::new(pb::GetSalesResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::SalesRow {
                    key: row.key,
                    label: row.label,
                    currency: row.currency,
                    orders: row.orders,
                    units: row.units,
                    revenue_units: row.revenue_units,
                    refunded_units: row.refunded_units,
                })
                .collect(),
        }))
    }

    async fn get_funnel(
        &self,
        request: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let request = request.into_inner();
        let (from, to) = period(request.from.as_ref(), request.to.as_ref())?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let funnel = store::funnel(&mut conn, from, to).await?;
        Ok(Response::new(pb::GetFunnelResponse {
            carts: funnel.carts,
            placed: funnel.placed,
            confirmed: funnel.confirmed,
            delivered: funnel.delivered,
            rejected: funnel.rejected,
            failed: funnel.failed,
            cancelled: funnel.cancelled,
            refunded: funnel.refunded,
            cancellation_rate: rate(funnel.cancelled, funnel.confirmed),
            refund_rate: rate(funnel.refunded, funnel.confirmed),
        }))
    }

    async fn get_dashboard(
        &self,
        _request: Request<pb::GetDashboardRequest>,
    ) -> Result<Response<pb::GetDashboardResponse>, Status> {
        let now = Utc::now();
        let day_start = now.date_naive().and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let (orders_today, revenue) = store::today(&mut conn, day_start).await?;
        let stuck = store::stuck(&mut conn, now, STUCK_LIMIT).await?;
        drop(conn);
        let (dead_letters, dead_letters_complete) = self.dead_letters().await;
        Ok(Response::new(pb::GetDashboardResponse {
            day_start: Some(timestamp(day_start)),
            orders_today,
            revenue_today: revenue
                .into_iter()
                .map(|(currency_code, units)| Money { currency_code, units })
                .collect(),
            stuck_orders: stuck
                .into_iter()
                .map(|order| pb::StuckOrder {
                    order_id: order.order_id,
                    status: order.status,
                    since: Some(timestamp(order.since)),
                    expected_within_seconds: order.expected_within_seconds,
                })
                .collect(),
            dead_letters,
            dead_letters_complete,
        }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "analytics request failed");
                Status::internal("internal error")
            }
        }
    }
}
