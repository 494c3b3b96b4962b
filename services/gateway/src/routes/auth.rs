//! `/api/auth/*`: registration, login, token refresh and logout, passed to
//! the auth service. These are public (no bearer token needed).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use commerce_proto::auth::v1 as pb;

use super::{grpc, missing};
use crate::dto::{LoginRequest, RefreshTokenRequest, RegisterRequest, SessionResponse, TokenPair, User};
use crate::extract::ApiJson;
use crate::problem::Problem;
use crate::state::AppState;

pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<SessionResponse>), Problem> {
    let request =
        pb::RegisterRequest { email: body.email, password: body.password, display_name: body.display_name };
    let response = state.auth()?.register(request).await.map_err(grpc("auth"))?.into_inner();
    let session =
        SessionResponse { user: response.user.map(User::from), tokens: response.tokens.map(TokenPair::from) };
    Ok((StatusCode::CREATED, Json(session)))
}

pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<SessionResponse>, Problem> {
    let request = pb::LoginRequest { email: body.email, password: body.password };
    let response = state.auth()?.login(request).await.map_err(grpc("auth"))?.into_inner();
    Ok(Json(SessionResponse {
        user: response.user.map(User::from),
        tokens: response.tokens.map(TokenPair::from),
    }))
}

pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshTokenRequest>,
) -> Result<Json<TokenPair>, Problem> {
    let request = pb::RefreshRequest { refresh_token: body.refresh_token };
    let response = state.auth()?.refresh(request).await.map_err(grpc("auth"))?.into_inner();
    let tokens = response.tokens.ok_or_else(|| missing("auth", "tokens"))?;
    Ok(Json(TokenPair::from(tokens)))
}

pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshTokenRequest>,
) -> Result<StatusCode, Problem> {
    let request =
        commerce_platform::resilience::idempotent(pb::LogoutRequest { refresh_token: body.refresh_token });
    state.auth()?.logout(request).await.map_err(grpc("auth"))?;
    Ok(StatusCode::NO_CONTENT)
}
