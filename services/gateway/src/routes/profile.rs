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
    Address, AddressBook, AddressPatch, DataExport, ErasureRequest, NewAddressRequest, Notification, Order,
    Profile, Review, SavedAddress, Shipment, UpdateProfileRequest, ViewedProduct,
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

/// The order statuses that still need the customer's address: an account
/// with an order in one of them is not erased yet.
const OPEN_ORDER_STATUSES: [commerce_proto::order::v1::OrderStatus; 4] = {
    use commerce_proto::order::v1::OrderStatus;
    [OrderStatus::Pending, OrderStatus::Reserved, OrderStatus::Confirmed, OrderStatus::Shipped]
};

/// Erases the caller's account, confirmed with their password: auth
/// deletes the user and publishes `UserErased`, on which every service
/// deletes or anonymises what it keeps (orders and shipments keep their
/// amounts and lines, without the address; reviews stay without their
/// author); the cart goes at once. Refused (409) while an order of the
/// caller is on its way: its shipment still needs the address.
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ErasureRequest>,
) -> Result<StatusCode, Problem> {
    use commerce_proto::{auth, cart, order};
    for status in OPEN_ORDER_STATUSES {
        let request = order::v1::ListOrdersRequest {
            user_id: caller.user_id.clone(),
            page_size: 1,
            page_token: String::new(),
            status: status as i32,
        };
        let page = state.order()?.list_orders(idempotent(request)).await.map_err(grpc("order"))?.into_inner();
        if let Some(open) = page.orders.first() {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "order {} is still {}: an account is erased once its orders are delivered or cancelled",
                    open.id,
                    status.as_str_name().trim_start_matches("ORDER_STATUS_").to_ascii_lowercase()
                ),
            ));
        }
    }
    let request = auth::v1::EraseUserRequest { user_id: caller.user_id.clone(), password: body.password };
    // Not retried: a repeat of an erasure that happened answers 404.
    state.auth()?.erase_user(request).await.map_err(grpc("auth"))?;
    // Views this gateway has not sent yet would come after the erasure.
    state.product_views.forget(&caller.user_id);
    // The cart lives in Redis, outside the events; it would expire within a
    // day anyway, so a failure here is logged, not the caller's problem.
    let clear = cart::v1::ClearCartRequest { user_id: caller.user_id.clone() };
    match state.cart() {
        Ok(mut client) => {
            if let Err(status) = client.clear_cart(idempotent(clear)).await {
                tracing::warn!(user_id = %caller.user_id, error = %status, "an erased user's cart was not cleared; it expires on its own");
            }
        }
        Err(problem) => {
            tracing::warn!(user_id = %caller.user_id, error = ?problem, "an erased user's cart was not cleared; it expires on its own")
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Most records of one kind an export reads (a thousand pages of a
/// hundred): an account with more is a bot, and its export stops there
/// with `truncated` set rather than holding the gateway for minutes.
const EXPORT_MAX_PAGES: usize = 1000;
/// Page size of the export's reads.
const EXPORT_PAGE_SIZE: i32 = 100;

/// Everything the shop keeps about the caller, in one JSON document: the
/// profile, the address book, every order, shipment, notification and
/// review, and the products viewed.
pub async fn export(State(state): State<AppState>, caller: Caller) -> Result<Json<DataExport>, Problem> {
    use commerce_proto::{notification, order, shipping};
    let user_id = caller.user_id.clone();
    let profile = state
        .profile()?
        .get_profile(idempotent(pb::GetProfileRequest { user_id: user_id.clone() }))
        .await
        .map_err(grpc("profile"))?
        .into_inner();
    let book = state
        .profile()?
        .list_addresses(idempotent(pb::ListAddressesRequest { user_id: user_id.clone() }))
        .await
        .map_err(grpc("profile"))?
        .into_inner();
    let (orders, orders_cut) = every_page(|page_token| {
        let (state, user_id) = (state.clone(), user_id.clone());
        async move {
            let request =
                order::v1::ListOrdersRequest { user_id, page_size: EXPORT_PAGE_SIZE, page_token, status: 0 };
            let page =
                state.order()?.list_orders(idempotent(request)).await.map_err(grpc("order"))?.into_inner();
            Ok((page.orders.into_iter().map(Order::from).collect(), page.next_page_token))
        }
    })
    .await?;
    let (shipments, shipments_cut) = every_page(|page_token| {
        let (state, user_id) = (state.clone(), user_id.clone());
        async move {
            let request = shipping::v1::ListShipmentsRequest {
                courier_id: String::new(),
                user_id,
                status: 0,
                page_size: EXPORT_PAGE_SIZE,
                page_token,
            };
            let page = state
                .shipping()?
                .list_shipments(idempotent(request))
                .await
                .map_err(grpc("shipping"))?
                .into_inner();
            Ok((page.shipments.into_iter().map(Shipment::from).collect(), page.next_page_token))
        }
    })
    .await?;
    let (notifications, notifications_cut) = every_page(|page_token| {
        let (state, user_id) = (state.clone(), user_id.clone());
        async move {
            let request = notification::v1::ListNotificationsRequest {
                user_id,
                page_size: EXPORT_PAGE_SIZE,
                page_token,
                unread_only: false,
            };
            let page = state
                .notification()?
                .list_notifications(idempotent(request))
                .await
                .map_err(grpc("notification"))?
                .into_inner();
            Ok((page.notifications.into_iter().map(Notification::from).collect(), page.next_page_token))
        }
    })
    .await?;
    let (reviews, reviews_cut) = every_page(|page_token| {
        let (state, user_id) = (state.clone(), user_id.clone());
        async move {
            let request = commerce_proto::reviews::v1::ListUserReviewsRequest {
                user_id,
                page_size: EXPORT_PAGE_SIZE,
                page_token,
            };
            let page = state
                .reviews()?
                .list_user_reviews(idempotent(request))
                .await
                .map_err(grpc("reviews"))?
                .into_inner();
            Ok((page.reviews.into_iter().map(Review::from).collect(), page.next_page_token))
        }
    })
    .await?;
    let request = commerce_proto::recommendation::v1::ListViewsRequest { user_id: user_id.clone() };
    let views = state
        .recommendation()?
        .list_views(idempotent(request))
        .await
        .map_err(grpc("recommendation"))?
        .into_inner()
        .views;
    let truncated = orders_cut || shipments_cut || notifications_cut || reviews_cut;

    Ok(Json(DataExport {
        exported_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        user_id,
        roles: caller.roles.iter().map(|role| role.as_str().to_owned()).collect(),
        profile: Profile::from(profile),
        addresses: book.addresses.into_iter().map(SavedAddress::from).collect(),
        orders,
        shipments,
        notifications,
        reviews,
        viewed_products: views.into_iter().map(ViewedProduct::from).collect(),
        truncated,
    }))
}

/// Every record `read` gives page by page (a page token in, the page's
/// records and the next token out, empty on the last page), up to
/// [`EXPORT_MAX_PAGES`] pages; and whether it stopped there.
async fn every_page<T, F, Fut>(mut read: F) -> Result<(Vec<T>, bool), Problem>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Problem>>,
{
    let mut records = Vec::new();
    let mut token = String::new();
    for _ in 0..EXPORT_MAX_PAGES {
        let (page, next) = read(token).await?;
        records.extend(page);
        if next.is_empty() {
            return Ok((records, false));
        }
        token = next;
    }
    Ok((records, true))
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
