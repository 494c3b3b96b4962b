//! `/api/admin/dashboard` and `/api/admin/analytics/*`: the analytics
//! service's reports for administrators, with the dashboard's low-stock
//! list from inventory (named by the catalog), and the sales report as CSV.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Days, NaiveDate, Utc};
use commerce_platform::resilience::idempotent;
use commerce_proto::analytics::v1 as pb;
use commerce_proto::catalog::v1 as catalog_pb;
use commerce_proto::inventory::v1 as inventory_pb;
use commerce_proto::time::{from_timestamp, timestamp};

use super::grpc;
use crate::auth::AdminCaller;
use crate::dto::{
    AnalyticsQuery, Dashboard, DeadLetterCount, Funnel, LowStock, Money, SalesGrouping, SalesReport,
    SalesRow, StuckOrder,
};
use crate::extract::ApiQuery;
use crate::problem::Problem;
use crate::state::AppState;

/// Products with this many units available or fewer are low on stock.
const LOW_STOCK_AT: i64 = 5;
/// Low-stock products the dashboard lists.
const LOW_STOCK_LISTED: usize = 20;
/// Days of a report when the query names no first day.
const DEFAULT_DAYS: u64 = 30;

/// The period `[first day, last day]` of a query, checked, with the
/// analytics service's `[from, to)` instants.
struct Period {
    first: NaiveDate,
    last: NaiveDate,
}

impl Period {
    fn of(query: &AnalyticsQuery) -> Result<Self, Problem> {
        let day = |name: &str, value: &str| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map_err(|_| Problem::invalid_field(format!("query:{name}"), "must be a date (YYYY-MM-DD)"))
        };
        let last = match &query.to {
            Some(to) => day("to", to)?,
            None => Utc::now().date_naive(),
        };
        let first = match &query.from {
            Some(from) => day("from", from)?,
            None => last.checked_sub_days(Days::new(DEFAULT_DAYS - 1)).unwrap_or(last),
        };
        // Dates the schema accepts, in an order or span the reports do
        // not: unprocessable rather than malformed.
        let unprocessable =
            |detail: &str| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-period", detail);
        if first > last {
            return Err(unprocessable("from must not be after to"));
        }
        if (last - first).num_days() >= 366 {
            return Err(unprocessable("the period from..to may cover at most 366 days"));
        }
        Ok(Self { first, last })
    }

    fn from(&self) -> prost_types::Timestamp {
        timestamp(self.first.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
    }

    fn to(&self) -> prost_types::Timestamp {
        let next = self.last.checked_add_days(Days::new(1)).unwrap_or(self.last);
        timestamp(next.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
    }
}

fn rfc3339(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(from_timestamp)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The confirmed orders of a period, grouped by day, product or category.
pub async fn sales(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Json<SalesReport>, Problem> {
    Ok(Json(sales_report(&state, &query).await?))
}

async fn sales_report(state: &AppState, query: &AnalyticsQuery) -> Result<SalesReport, Problem> {
    let period = Period::of(query)?;
    let group_by = query.group_by.unwrap_or_default();
    let request = pb::GetSalesRequest {
        from: Some(period.from()),
        to: Some(period.to()),
        group_by: match group_by {
            SalesGrouping::Day => pb::SalesGrouping::Day,
            SalesGrouping::Product => pb::SalesGrouping::Product,
            SalesGrouping::Category => pb::SalesGrouping::Category,
        } as i32,
    };
    let rows =
        state.analytics()?.get_sales(idempotent(request)).await.map_err(grpc("analytics"))?.into_inner().rows;
    Ok(SalesReport {
        from: period.first.to_string(),
        to: period.last.to_string(),
        group_by,
        rows: rows
            .into_iter()
            .map(|row| SalesRow {
                key: row.key,
                label: row.label,
                currency: row.currency,
                orders: row.orders,
                units: row.units,
                revenue_minor: row.revenue_units,
                refunded_minor: row.refunded_units,
            })
            .collect(),
    })
}

/// One CSV field: quoted when it holds a comma, quote or line break, and
/// prefixed with `'` when a spreadsheet would read it as a formula.
fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// The sales report as CSV (`text/csv`, one header line, one line per row).
pub async fn sales_csv(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Response, Problem> {
    let report = sales_report(&state, &query).await?;
    let mut csv = String::from("key,label,currency,orders,units,revenue_minor,refunded_minor\r\n");
    for row in &report.rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            csv_field(&row.key),
            csv_field(&row.label),
            csv_field(&row.currency),
            row.orders,
            row.units,
            row.revenue_minor,
            row.refunded_minor
        ));
    }
    let name = format!("attachment; filename=\"sales-{}-{}.csv\"", report.from, report.to);
    let mut response = csv.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// What became of the orders placed in a period.
pub async fn funnel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Json<Funnel>, Problem> {
    let period = Period::of(&query)?;
    let request = pb::GetFunnelRequest { from: Some(period.from()), to: Some(period.to()) };
    let funnel =
        state.analytics()?.get_funnel(idempotent(request)).await.map_err(grpc("analytics"))?.into_inner();
    Ok(Json(Funnel {
        from: period.first.to_string(),
        to: period.last.to_string(),
        carts: funnel.carts,
        placed: funnel.placed,
        confirmed: funnel.confirmed,
        delivered: funnel.delivered,
        rejected: funnel.rejected,
        failed: funnel.failed,
        cancelled: funnel.cancelled,
        refunded: funnel.refunded,
        cancellation_rate: funnel.cancellation_rate,
        refund_rate: funnel.refund_rate,
    }))
}

/// Today's orders and revenue, products running out, orders stuck in a
/// status and dead-lettered events.
pub async fn dashboard(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Dashboard>, Problem> {
    let figures = state
        .analytics()?
        .get_dashboard(idempotent(pb::GetDashboardRequest {}))
        .await
        .map_err(grpc("analytics"))?
        .into_inner();
    // Twice the listed number: stock rows of products deleted from the
    // catalog are dropped below.
    let request = inventory_pb::ListLowStockRequest {
        max_available: LOW_STOCK_AT,
        limit: i32::try_from(LOW_STOCK_LISTED * 2).unwrap_or(40),
    };
    let stock = state
        .inventory()?
        .list_low_stock(idempotent(request))
        .await
        .map_err(grpc("inventory"))?
        .into_inner()
        .stock;
    let ids: Vec<String> = stock.iter().map(|level| level.product_id.clone()).collect();
    let products = if ids.is_empty() {
        Vec::new()
    } else {
        let request = catalog_pb::BatchGetProductsRequest { ids };
        state
            .catalog()?
            .batch_get_products(idempotent(request))
            .await
            .map_err(grpc("catalog"))?
            .into_inner()
            .products
    };
    let low_stock = stock
        .into_iter()
        .filter_map(|level| {
            let product = products.iter().find(|product| product.id == level.product_id && product.active)?;
            Some(LowStock {
                product_id: level.product_id,
                name: product.name.clone(),
                available: level.available,
                reserved: level.reserved,
            })
        })
        .take(LOW_STOCK_LISTED)
        .collect();
    Ok(Json(Dashboard {
        day_start: rfc3339(figures.day_start.as_ref()),
        orders_today: figures.orders_today,
        revenue_today: figures.revenue_today.into_iter().map(Money::from).collect(),
        low_stock,
        stuck_orders: figures
            .stuck_orders
            .into_iter()
            .map(|order| StuckOrder {
                since: rfc3339(order.since.as_ref()),
                order_id: order.order_id,
                status: order.status,
                expected_within_seconds: order.expected_within_seconds,
            })
            .collect(),
        dead_letters: figures
            .dead_letters
            .into_iter()
            .map(|dead| DeadLetterCount { service: dead.service, topic: dead.topic, count: dead.count })
            .collect(),
        dead_letters_complete: figures.dead_letters_complete,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed_and_never_read_as_formulas() {
        assert_eq!(csv_field("Kettle"), "Kettle");
        assert_eq!(csv_field("Kettle, steel"), "\"Kettle, steel\"");
        assert_eq!(csv_field("The \"best\" kettle"), "\"The \"\"best\"\" kettle\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-5"), "'-5");
    }

    #[test]
    fn a_period_is_whole_days_with_the_last_included_and_at_most_a_year() {
        let query = |from: &str, to: &str| AnalyticsQuery {
            from: Some(from.to_owned()),
            to: Some(to.to_owned()),
            group_by: None,
        };
        let period = Period::of(&query("2026-12-01", "2026-12-03")).unwrap();
        assert_eq!(period.from(), timestamp("2026-12-01T00:00:00Z".parse().unwrap()));
        assert_eq!(period.to(), timestamp("2026-12-04T00:00:00Z".parse().unwrap()));
        assert!(Period::of(&query("2026-12-03", "2026-12-01")).is_err(), "reversed");
        assert!(Period::of(&query("2025-11-30", "2026-12-01")).is_err(), "367 days");
        assert!(Period::of(&query("2025-12-01", "2026-12-01")).is_ok(), "366 days");
        assert!(Period::of(&query("yesterday", "2026-12-01")).is_err(), "not a date");
        let default = Period::of(&AnalyticsQuery::default()).unwrap();
        assert_eq!((default.last - default.first).num_days(), 29, "thirty days to today");
    }
}
