//! `/api/users/me*`: the caller's profile and address book, from the
//! profile service, always for the user of the verified token; and
//! [`shipping_address`], the default address an order or checkout without
//! one ships to.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use commerce_platform::resilience::idempotent;
use commerce_proto::common::v1 as common;
use commerce_proto::profile::v1 as pb;

use super::{grpc, missing};
use crate::auth::Caller;
use crate::dto::{
    Address, AddressBook, AddressPatch, NewAddressRequest, Profile, SavedAddress, UpdateProfileRequest,
};
use crate::extract::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;

/// The caller's profile.
pub async fn get_profile(State(state): State<AppState>, caller: Caller) -> Result<Json<Profile>, Problem> {
    let request = pb::GetProfileRequest { user_id: caller.user_id };
    let profile = state.profile()?.get_profile(idempotent(request)).await.map_err(grpc("profile"))?;
    Ok(Json(Profile::from(profile.into_inner())))
}

/// Replaces the caller's profile.
pub async fn put_profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateProfileRequest>,
) -> Result<Json<Profile>, Problem> {
    let request = pb::UpdateProfileRequest {
        user_id: caller.user_id,
        display_name: body.display_name,
        phone: body.phone,
        preferences: Some(pb::Preferences {
            currency: body.preferences.currency,
            marketing_consent: body.preferences.marketing_consent,
        }),
    };
    // A replacement: the same request twice leaves the same profile.
    let profile = state.profile()?.update_profile(idempotent(request)).await.map_err(grpc("profile"))?;
    Ok(Json(Profile::from(profile.into_inner())))
}

/// The caller's addresses, the default first.
pub async fn list_addresses(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AddressBook>, Problem> {
    let request = pb::ListAddressesRequest { user_id: caller.user_id };
    let book =
        state.profile()?.list_addresses(idempotent(request)).await.map_err(grpc("profile"))?.into_inner();
    Ok(Json(AddressBook { addresses: book.addresses.into_iter().map(SavedAddress::from).collect() }))
}

/// Adds an address to the caller's book.
pub async fn add_address(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewAddressRequest>,
) -> Result<(StatusCode, Json<SavedAddress>), Problem> {
    let request = pb::AddAddressRequest {
        user_id: caller.user_id,
        label: body.label,
        address: Some(body.address.into()),
        make_default: body.make_default,
    };
    // Not retried: a repeat would add the address twice.
    let saved = state.profile()?.add_address(request).await.map_err(grpc("profile"))?.into_inner();
    Ok((StatusCode::CREATED, Json(SavedAddress::from(saved))))
}

/// Changes what the body gives of one of the caller's addresses.
pub async fn update_address(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddressPatch>,
) -> Result<Json<SavedAddress>, Problem> {
    let id = crate::extract::path_uuid("id", &id)?;
    let request = pb::UpdateAddressRequest {
        user_id: caller.user_id,
        address_id: id.to_string(),
        label: body.label.map(|label| pb::LabelChange { label }),
        address: body.address.map(common::Address::from),
        make_default: body.make_default,
    };
    let saved = state.profile()?.update_address(idempotent(request)).await.map_err(grpc("profile"))?;
    Ok(Json(SavedAddress::from(saved.into_inner())))
}

/// Deletes one of the caller's addresses.
pub async fn delete_address(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = crate::extract::path_uuid("id", &id)?;
    let request = pb::DeleteAddressRequest { user_id: caller.user_id, address_id: id.to_string() };
    // Not retried: a repeat of a delete that happened answers 404.
    state.profile()?.delete_address(request).await.map_err(grpc("profile"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The address an order ships to: the one given, else the user's default
/// address; 422 when there is neither.
pub(crate) async fn shipping_address(
    state: &AppState,
    user_id: &str,
    given: Option<Address>,
) -> Result<common::Address, Problem> {
    if let Some(address) = given {
        return Ok(address.into());
    }
    let request = pb::GetDefaultAddressRequest { user_id: user_id.to_owned() };
    match state.profile()?.get_default_address(idempotent(request)).await {
        Ok(saved) => saved.into_inner().address.ok_or_else(|| missing("profile", "address")),
        Err(status) if status.code() == tonic::Code::NotFound => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-shipping-address",
            "no shipping_address was given and the address book has no default address: give one, or add one at /api/users/me/addresses",
        )),
        Err(status) => Err(grpc("profile")(status)),
    }
}
