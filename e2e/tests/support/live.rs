//! Clients of the live order endpoints, and a second gateway replica to
//! reach them through: a Server-Sent Events reader over reqwest (the format
//! is four line kinds; a parser here keeps the test's view of the wire
//! exact) and a WebSocket client (tokio-tungstenite).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use commerce_topology::Service;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::procs::{Proc, free_port};
use super::shop::{Shop, binary_path, infra_var};
use super::wait_for;

/// Longest wait for one event of a live stream.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

/// An open `text/event-stream` response, read event by event.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// GET `url` with `token` and, when given, `Last-Event-ID`; the stream
    /// if the answer is 200 `text/event-stream`, else the status and body.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<Result<Self, (reqwest::StatusCode, String, String)>> {
        let mut request = http.get(url).bearer_auth(token).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if response.status() != reqwest::StatusCode::OK || !content_type.starts_with("text/event-stream") {
            let status = response.status();
            return Ok(Err((status, content_type, response.text().await.unwrap_or_default())));
        }
        Ok(Ok(Self { response, buffer: String::new() }))
    }

    /// The next event with data (comments and keep-alives skipped), `None`
    /// when the server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            let chunk = tokio::time::timeout(EVENT_TIMEOUT, self.response.chunk())
                .await
                .context("no event within the timeout")??;
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).context("UTF-8 stream")?),
                None if self.buffer.trim().is_empty() => return Ok(None),
                None => bail!("the stream ended inside an event: {:?}", self.buffer),
            }
        }
    }
}

/// One block of lines; `None` for a comment-only block.
fn parse_block(block: &str) -> anyhow::Result<Option<SseEvent>> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => {} // a comment
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            "retry" => {}
            other => bail!("unknown SSE field {other:?} in {block:?}"),
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    let data = serde_json::from_str(&data.join("\n")).with_context(|| format!("event data of {block:?}"))?;
    Ok(Some(SseEvent { id, event, data }))
}

/// A WebSocket to `/api/orders/live`.
pub struct LiveSocket {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl LiveSocket {
    pub async fn connect(gateway: &str, token: &str) -> anyhow::Result<Self> {
        let url = format!("{}/api/orders/live", gateway.replacen("http://", "ws://", 1));
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { socket })
    }

    /// The next text message as JSON; `None` once the server closed.
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            let message = tokio::time::timeout(EVENT_TIMEOUT, self.socket.next())
                .await
                .context("no message within the timeout")?;
            match message {
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}

/// A second gateway (`commerce serve gateway`) in front of a shop's
/// services: another replica, as behind a load balancer.
pub struct SecondGateway {
    pub url: String,
    proc: Proc,
}

impl SecondGateway {
    pub async fn start(shop: &Shop) -> anyhow::Result<Self> {
        let (http, admin) = (free_port(), free_port());
        let mut args = vec![
            "serve".to_owned(),
            "gateway".to_owned(),
            format!("--http-addr=127.0.0.1:{http}"),
            format!("--admin-addr=127.0.0.1:{admin}"),
            format!("--redis-url={}", infra_var("COMMERCE_REDIS_URL")?),
            "--log-format=json".to_owned(),
        ];
        for service in Service::ALL {
            if let Some(grpc) = service.local_ports().grpc {
                args.push(format!("--peer={service}=http://127.0.0.1:{}", grpc + shop.port_offset));
            }
        }
        let log = PathBuf::from(&shop.log_path).with_extension("second-gateway.log");
        let proc = Proc::spawn("second gateway", &binary_path()?, args, Vec::new(), log)?;
        let client = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        wait_for("the second gateway is ready", Duration::from_secs(60), || async {
            let answer = client.get(&ready).timeout(Duration::from_secs(3)).send().await?;
            Ok(answer.status().is_success().then_some(()))
        })
        .await
        .with_context(|| proc.log_tail(20))?;
        Ok(Self { url: format!("http://127.0.0.1:{http}"), proc })
    }
}

impl Drop for SecondGateway {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}
