//! `/api/cart`: the caller's own cart (the user id comes from the token).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use commerce_platform::resilience::idempotent;
use commerce_proto::cart::v1 as pb;

use super::{grpc, missing};
use crate::auth::Caller;
use crate::dto::{AddItemRequest, Cart, CheckoutRequest, Order, UpdateItemRequest, quantity_u32};
use crate::extract::{ApiJson, idempotency_key, path_uuid};
use crate::problem::Problem;
use crate::state::AppState;

fn cart(value: Option<pb::Cart>) -> Result<Json<Cart>, Problem> {
    value.map(|cart| Json(Cart::from(cart))).ok_or_else(|| missing("cart", "cart"))
}

pub async fn get_cart(State(state): State<AppState>, caller: Caller) -> Result<Json<Cart>, Problem> {
    let request = pb::GetCartRequest { user_id: caller.user_id };
    cart(state.cart()?.get_cart(idempotent(request)).await.map_err(grpc("cart"))?.into_inner().cart)
}

pub async fn clear_cart(State(state): State<AppState>, caller: Caller) -> Result<Json<Cart>, Problem> {
    let request = pb::ClearCartRequest { user_id: caller.user_id };
    cart(state.cart()?.clear_cart(idempotent(request)).await.map_err(grpc("cart"))?.into_inner().cart)
}

pub async fn add_item(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<AddItemRequest>,
) -> Result<Json<Cart>, Problem> {
    let request = pb::AddItemRequest {
        user_id: caller.user_id,
        product_id: body.product_id.to_string(),
        quantity: quantity_u32(body.quantity),
    };
    cart(state.cart()?.add_item(request).await.map_err(grpc("cart"))?.into_inner().cart)
}

pub async fn update_item(
    State(state): State<AppState>,
    caller: Caller,
    Path(product_id): Path<String>,
    ApiJson(body): ApiJson<UpdateItemRequest>,
) -> Result<Json<Cart>, Problem> {
    let product_id = path_uuid("product_id", &product_id)?;
    let request = pb::UpdateItemRequest {
        user_id: caller.user_id,
        product_id: product_id.to_string(),
        quantity: quantity_u32(body.quantity),
    };
    // Setting a quantity is idempotent.
    cart(state.cart()?.update_item(idempotent(request)).await.map_err(grpc("cart"))?.into_inner().cart)
}

pub async fn remove_item(
    State(state): State<AppState>,
    caller: Caller,
    Path(product_id): Path<String>,
) -> Result<Json<Cart>, Problem> {
    let product_id = path_uuid("product_id", &product_id)?;
    let request = pb::RemoveItemRequest { user_id: caller.user_id, product_id: product_id.to_string() };
    cart(state.cart()?.remove_item(idempotent(request)).await.map_err(grpc("cart"))?.into_inner().cart)
}

pub async fn checkout(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckoutRequest>,
) -> Result<(StatusCode, Json<Order>), Problem> {
    let key = idempotency_key(&headers)?;
    let shipping_address =
        super::profile::shipping_address(&state, &caller.user_id, body.shipping_address).await?;
    let request = pb::CheckoutRequest {
        user_id: caller.user_id,
        idempotency_key: key,
        shipping_address: Some(shipping_address),
        payment_method_token: body.payment_method_token,
    };
    // Idempotent per (user, key) by contract, so a retry is safe.
    let response = state.cart()?.checkout(idempotent(request)).await.map_err(grpc("cart"))?.into_inner();
    let order = response.order.ok_or_else(|| missing("cart", "order"))?;
    Ok((StatusCode::CREATED, Json(Order::from(order))))
}
