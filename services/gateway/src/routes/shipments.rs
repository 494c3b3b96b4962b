//! `/api/shipments`: customers track their orders' shipments; couriers list
//! and move the shipments assigned to them; admins see everything.

use axum::Json;
use axum::extract::{Path, State};
use commerce_platform::resilience::idempotent;
use commerce_proto::shipping::v1 as pb;

use super::{grpc, missing, page_size};
use crate::auth::{Caller, CourierCaller};
use crate::dto::{Shipment, ShipmentPage, ShipmentQuery, ShipmentStatusRequest, TrackingEvent};
use crate::extract::{ApiJson, ApiQuery, path_uuid};
use crate::jwt::Role;
use crate::problem::Problem;
use crate::state::AppState;

/// With `order_id`: that order's shipment and history (owner, courier or
/// admin). Without: a customer's own shipments, a courier's assigned ones,
/// or every shipment for an admin.
pub async fn list_shipments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ShipmentQuery>,
) -> Result<Json<ShipmentPage>, Problem> {
    let staff = caller.is_admin() || caller.has(Role::Courier);
    if let Some(order_id) = query.order_id {
        if !staff {
            super::orders::visible_order(&state, &caller, order_id).await?;
        }
        let request = pb::TrackShipmentRequest { order_id: order_id.to_string() };
        let response = state
            .shipping()?
            .track_shipment(idempotent(request))
            .await
            .map_err(grpc("shipping"))?
            .into_inner();
        let mut shipment = Shipment::from(response.shipment.ok_or_else(|| missing("shipping", "shipment"))?);
        shipment.events = response.events.into_iter().map(TrackingEvent::from).collect();
        return Ok(Json(ShipmentPage {
            shipments: vec![shipment],
            next_page_token: String::new(),
            total_size: 1,
        }));
    }
    let (courier_id, user_id) = if caller.is_admin() {
        (String::new(), String::new())
    } else if staff {
        (caller.user_id.clone(), String::new())
    } else {
        (String::new(), caller.user_id.clone())
    };
    let request = pb::ListShipmentsRequest {
        courier_id,
        user_id,
        status: query.status.map_or(0, |status| pb::ShipmentStatus::from(status) as i32),
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
    };
    let response =
        state.shipping()?.list_shipments(idempotent(request)).await.map_err(grpc("shipping"))?.into_inner();
    Ok(Json(ShipmentPage {
        shipments: response.shipments.into_iter().map(Shipment::from).collect(),
        next_page_token: response.next_page_token,
        total_size: response.total_size,
    }))
}

pub async fn get_shipment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Shipment>, Problem> {
    let id = path_uuid("id", &id)?;
    let request = pb::GetShipmentRequest { id: id.to_string() };
    let shipment = state
        .shipping()?
        .get_shipment(idempotent(request))
        .await
        .map_err(grpc("shipping"))?
        .into_inner()
        .shipment;
    match shipment {
        Some(shipment)
            if caller.is_admin()
                || shipment.user_id == caller.user_id
                || shipment.courier_id == caller.user_id =>
        {
            Ok(Json(Shipment::from(shipment)))
        }
        _ => Err(Problem::not_found(format!("shipment {id} does not exist"))),
    }
}

/// A courier (or admin) moves a shipment along; the shipping service
/// checks the transition and that a courier is the one assigned.
pub async fn update_status(
    State(state): State<AppState>,
    CourierCaller(caller): CourierCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ShipmentStatusRequest>,
) -> Result<Json<Shipment>, Problem> {
    let id = path_uuid("id", &id)?;
    let request = pb::UpdateShipmentStatusRequest {
        shipment_id: id.to_string(),
        status: pb::ShipmentStatus::from(body.status) as i32,
        courier_id: caller.user_id,
        note: body.note,
        location: body.location,
    };
    // Repeating the current status is a no-op by contract.
    let response = state
        .shipping()?
        .update_shipment_status(idempotent(request))
        .await
        .map_err(grpc("shipping"))?
        .into_inner();
    let shipment = response.shipment.ok_or_else(|| missing("shipping", "shipment"))?;
    Ok(Json(Shipment::from(shipment)))
}
