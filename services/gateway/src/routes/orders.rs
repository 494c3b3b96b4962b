//! `/api/orders`: placing, reading and cancelling the caller's orders.
//! An order of another user reads as 404 (its existence is not revealed);
//! admins see every order.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use commerce_platform::resilience::idempotent;
use commerce_proto::order::v1 as pb;
use uuid::Uuid;

use super::{grpc, missing, page_size};
use crate::auth::Caller;
use crate::dto::{CancelOrderRequest, Order, OrderPage, OrderQuery, PlaceOrderRequest, quantity_u32};
use crate::extract::{ApiJson, ApiQuery, OptionalJson, idempotency_key, path_uuid};
use crate::problem::Problem;
use crate::state::AppState;

pub async fn place_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderRequest>,
) -> Result<(StatusCode, Json<Order>), Problem> {
    let key = idempotency_key(&headers)?;
    let shipping_address =
        super::profile::shipping_address(&state, &caller.user_id, body.shipping_address).await?;
    let request = pb::PlaceOrderRequest {
        user_id: caller.user_id,
        idempotency_key: key,
        lines: body
            .lines
            .iter()
            .map(|line| pb::PlaceOrderLine {
                product_id: line.product_id.to_string(),
                quantity: quantity_u32(line.quantity),
            })
            .collect(),
        shipping_address: Some(shipping_address),
        payment_method_token: body.payment_method_token,
    };
    // Idempotent per (user, key) by contract, so a retry is safe.
    let response = state.order()?.place_order(idempotent(request)).await.map_err(grpc("order"))?.into_inner();
    let order = response.order.ok_or_else(|| missing("order", "order"))?;
    Ok((StatusCode::CREATED, Json(Order::from(order))))
}

pub async fn list_orders(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<OrderPage>, Problem> {
    let request = pb::ListOrdersRequest {
        user_id: caller.user_id,
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
        status: query.status.map_or(0, |status| pb::OrderStatus::from(status) as i32),
    };
    list(&state, request).await
}

pub(crate) async fn list(
    state: &AppState,
    request: pb::ListOrdersRequest,
) -> Result<Json<OrderPage>, Problem> {
    let response = state.order()?.list_orders(idempotent(request)).await.map_err(grpc("order"))?.into_inner();
    Ok(Json(OrderPage {
        orders: response.orders.into_iter().map(Order::from).collect(),
        next_page_token: response.next_page_token,
        total_size: response.total_size,
    }))
}

/// The order if the caller may see it (owner or admin), else 404.
pub(crate) async fn visible_order(state: &AppState, caller: &Caller, id: Uuid) -> Result<pb::Order, Problem> {
    let request = pb::GetOrderRequest { id: id.to_string() };
    let order =
        state.order()?.get_order(idempotent(request)).await.map_err(grpc("order"))?.into_inner().order;
    match order {
        Some(order) if order.user_id == caller.user_id || caller.is_admin() => Ok(order),
        _ => Err(Problem::not_found(format!("order {id} does not exist"))),
    }
}

pub async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, Problem> {
    let id = path_uuid("id", &id)?;
    Ok(Json(Order::from(visible_order(&state, &caller, id).await?)))
}

pub async fn cancel_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CancelOrderRequest>,
) -> Result<Json<Order>, Problem> {
    let id = path_uuid("id", &id)?;
    visible_order(&state, &caller, id).await?;
    let reason = body.map(|body| body.reason).filter(|reason| !reason.is_empty());
    let request = pb::CancelOrderRequest {
        id: id.to_string(),
        // The order service checks ownership again when a user id is given.
        user_id: if caller.is_admin() { String::new() } else { caller.user_id.clone() },
        reason: reason.unwrap_or_else(|| {
            if caller.is_admin() { "cancelled by an admin" } else { "cancelled by the customer" }.to_owned()
        }),
    };
    // Cancelling is idempotent by contract.
    let response =
        state.order()?.cancel_order(idempotent(request)).await.map_err(grpc("order"))?.into_inner();
    let order = response.order.ok_or_else(|| missing("order", "order"))?;
    Ok(Json(Order::from(order)))
}
