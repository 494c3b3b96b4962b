//! The `ShippingService` gRPC server: proto <-> domain and the one
//! `From<Error> for Status` mapping.

use chrono::{DateTime, Utc};
use commerce_proto::shipping::v1 as pb;
use commerce_proto::shipping::v1::shipping_service_server::ShippingService;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::domain::ShipmentStatus;
use crate::events::{self, StatusChange};
use crate::store::{self, Shipment, TrackingEvent};

const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;

/// The gRPC face of the shipping service.
#[derive(Debug, Clone)]
pub struct ShippingGrpc {
    pool: PgPool,
    couriers: Vec<String>,
}

impl ShippingGrpc {
    pub fn new(pool: PgPool, couriers: Vec<String>) -> Self {
        Self { pool, couriers }
    }
}

pub fn status_to_proto(status: ShipmentStatus) -> pb::ShipmentStatus {
    match status {
        ShipmentStatus::Pending => pb::ShipmentStatus::Pending,
        ShipmentStatus::Assigned => pb::ShipmentStatus::Assigned,
        ShipmentStatus::PickedUp => pb::ShipmentStatus::PickedUp,
        ShipmentStatus::InTransit => pb::ShipmentStatus::InTransit,
        ShipmentStatus::Delivered => pb::ShipmentStatus::Delivered,
        ShipmentStatus::Halted => pb::ShipmentStatus::Halted,
    }
}

fn status_from_proto(status: pb::ShipmentStatus) -> Option<ShipmentStatus> {
    match status {
        pb::ShipmentStatus::Unspecified => None,
        pb::ShipmentStatus::Pending => Some(ShipmentStatus::Pending),
        pb::ShipmentStatus::Assigned => Some(ShipmentStatus::Assigned),
        pb::ShipmentStatus::PickedUp => Some(ShipmentStatus::PickedUp),
        pb::ShipmentStatus::InTransit => Some(ShipmentStatus::InTransit),
        pb::ShipmentStatus::Delivered => Some(ShipmentStatus::Delivered),
        pb::ShipmentStatus::Halted => Some(ShipmentStatus::Halted),
    }
}

pub fn shipment_to_proto(shipment: &Shipment) -> pb::Shipment {
    pb::Shipment {
        id: shipment.id.to_string(),
        order_id: shipment.order_id.clone(),
        user_id: shipment.user_id.clone(),
        courier_id: shipment.courier_id.clone(),
        status: status_to_proto(shipment.status).into(),
        address: Some(shipment.address.clone()),
        tracking_number: shipment.tracking_number.clone(),
        halt_reason: shipment.halt_reason.clone(),
        created_at: Some(timestamp(shipment.created_at)),
        updated_at: Some(timestamp(shipment.updated_at)),
        delivered_at: shipment.delivered_at.map(timestamp),
    }
}

fn tracking_to_proto(event: &TrackingEvent) -> pb::TrackingEvent {
    let status =
        ShipmentStatus::parse(&event.status).map_or(pb::ShipmentStatus::Unspecified, status_to_proto);
    pb::TrackingEvent {
        status: status.into(),
        description: event.description.clone(),
        location: event.location.clone(),
        actor_id: event.actor_id.clone(),
        occurred_at: Some(timestamp(event.occurred_at)),
    }
}

fn parse_id(field: &'static str, raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| Error::InvalidRequest { field, problem: "is not a UUID" })
}

fn encode_page_token(shipment: &Shipment) -> String {
    format!("{}_{}", shipment.created_at.timestamp_micros(), shipment.id.simple())
}

fn decode_page_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid =
        || Error::InvalidRequest { field: "page_token", problem: "is not a token this server issued" };
    let (micros, id) = token.split_once('_').ok_or_else(invalid)?;
    let time = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(invalid)?;
    Ok(Some((time, Uuid::parse_str(id).map_err(|_| invalid())?)))
}

#[tonic::async_trait]
impl ShippingService for ShippingGrpc {
    async fn create_shipment(
        &self,
        request: Request<pb::CreateShipmentRequest>,
    ) -> Result<Response<pb::CreateShipmentResponse>, Status> {
        let request = request.into_inner();
        if request.order_id.is_empty() {
            return Err(Error::InvalidRequest { field: "order_id", problem: "is empty" }.into());
        }
        let address =
            request.address.ok_or(Error::InvalidRequest { field: "address", problem: "is missing" })?;
        commerce_platform::telemetry::record_order_id(&request.order_id);
        let mut tx = commerce_platform::db::begin(&self.pool, "update shipment")
            .await
            .map_err(Error::UpdateShipment)?;
        let courier = (!request.courier_id.is_empty()).then_some(request.courier_id.as_str());
        let shipment = events::create_shipment(
            &mut tx,
            &request.order_id,
            &request.user_id,
            address,
            courier,
            &self.couriers,
        )
        .await?;
        tx.commit().await.map_err(Error::UpdateShipment)?;
        Ok(Response::new(pb::CreateShipmentResponse { shipment: Some(shipment_to_proto(&shipment)) }))
    }

    async fn get_shipment(
        &self,
        request: Request<pb::GetShipmentRequest>,
    ) -> Result<Response<pb::GetShipmentResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::LoadShipment)?;
        let shipment = store::find(&mut conn, Some(id), None, false).await?.ok_or(Error::ShipmentNotFound)?;
        Ok(Response::new(pb::GetShipmentResponse { shipment: Some(shipment_to_proto(&shipment)) }))
    }

    async fn track_shipment(
        &self,
        request: Request<pb::TrackShipmentRequest>,
    ) -> Result<Response<pb::TrackShipmentResponse>, Status> {
        let order_id = request.into_inner().order_id;
        let mut conn = self.pool.acquire().await.map_err(Error::LoadShipment)?;
        let shipment =
            store::find(&mut conn, None, Some(&order_id), false).await?.ok_or(Error::ShipmentNotFound)?;
        let history = store::history(&mut conn, shipment.id).await?;
        Ok(Response::new(pb::TrackShipmentResponse {
            shipment: Some(shipment_to_proto(&shipment)),
            events: history.iter().map(tracking_to_proto).collect(),
        }))
    }

    async fn update_shipment_status(
        &self,
        request: Request<pb::UpdateShipmentStatusRequest>,
    ) -> Result<Response<pb::UpdateShipmentStatusResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id("shipment_id", &request.shipment_id)?;
        let to = status_from_proto(request.status())
            .ok_or(Error::InvalidRequest { field: "status", problem: "is unspecified" })?;
        if to == ShipmentStatus::Halted && request.note.trim().is_empty() {
            return Err(
                Error::InvalidRequest { field: "note", problem: "is required to halt a shipment" }.into()
            );
        }
        let mut tx = commerce_platform::db::begin(&self.pool, "update shipment")
            .await
            .map_err(Error::UpdateShipment)?;
        let shipment = store::find(&mut tx, Some(id), None, true).await?.ok_or(Error::ShipmentNotFound)?;
        let actor_id =
            if request.courier_id.is_empty() { "admin".to_owned() } else { request.courier_id.clone() };
        let change = StatusChange {
            to,
            courier_id: request.courier_id,
            note: request.note,
            location: request.location,
            actor_id,
        };
        let shipment = events::change_status(&mut tx, shipment, change).await?;
        tx.commit().await.map_err(Error::UpdateShipment)?;
        Ok(Response::new(pb::UpdateShipmentStatusResponse { shipment: Some(shipment_to_proto(&shipment)) }))
    }

    async fn list_shipments(
        &self,
        request: Request<pb::ListShipmentsRequest>,
    ) -> Result<Response<pb::ListShipmentsResponse>, Status> {
        let request = request.into_inner();
        let page_size = match i64::from(request.page_size) {
            size if size <= 0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(&request.page_token)?;
        let filter = store::ListFilter {
            courier_id: (!request.courier_id.is_empty()).then_some(request.courier_id.as_str()),
            user_id: (!request.user_id.is_empty()).then_some(request.user_id.as_str()),
            status: status_from_proto(request.status()),
        };
        let mut conn = self.pool.acquire().await.map_err(Error::LoadShipment)?;
        let (shipments, total) = store::list(&mut conn, filter, page_size + 1, after).await?;
        let more = shipments.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
        let page: Vec<&Shipment> =
            shipments.iter().take(usize::try_from(page_size).unwrap_or(usize::MAX)).collect();
        let next_page_token =
            if more { page.last().map(|s| encode_page_token(s)).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListShipmentsResponse {
            shipments: page.into_iter().map(shipment_to_proto).collect(),
            next_page_token,
            total_size: total,
        }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            Error::ShipmentNotFound => Status::not_found(message),
            Error::RefuseTransition(_) => Status::failed_precondition(message),
            Error::DenyCourier { .. } => Status::permission_denied(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "shipping request failed");
                Status::internal("internal error")
            }
        }
    }
}
