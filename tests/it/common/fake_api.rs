//! A fake LLM API on the test upstream, shaped enough like OpenAI's `POST /v1/chat/completions`
//! and Anthropic's `POST /v1/messages` for the official SDKs to parse it, non-streaming and
//! streaming (`"stream": true` → `text/event-stream`).
//!
//! It checks the credential it received: 401 unless `Authorization: Bearer sk-test-REAL` or
//! `x-api-key: sk-test-REAL` is present, and the reply's text says which header carried it
//! (`key via x-api-key`), so a test can assert the upstream saw the real secret, and where.
//! Under `/bad-gateway/` every request gets a plain 502 (no `x-should-retry`), which the SDKs
//! retry by default.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use super::upstream::{TBody, full, tokio_stream_from};

/// The secret the fake API accepts.
pub const FAKE_API_KEY: &str = "sk-test-REAL";

/// Which API a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAiChat,
    AnthropicMessages,
}

impl Api {
    pub fn route(path: &str) -> Option<Api> {
        match path {
            "/v1/chat/completions" => Some(Api::OpenAiChat),
            "/v1/messages" => Some(Api::AnthropicMessages),
            _ => None,
        }
    }
}

/// Whether `path` is the fake API's always-502 prefix.
pub fn is_bad_gateway(path: &str) -> bool {
    path.starts_with("/bad-gateway/")
}

/// A 502 from the upstream itself, without `x-should-retry`.
pub fn bad_gateway() -> Response<TBody> {
    json_response(
        502,
        &json!({"error": {"message": "fake upstream: bad gateway", "type": "server_error"}}),
    )
}

/// The headers that carried exactly the accepted secret, in a fixed order.
fn carried_by(headers: &HeaderMap) -> Vec<&'static str> {
    let is = |name: &str, want: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == want.as_bytes())
    };
    let mut out = Vec::new();
    if is("authorization", &format!("Bearer {FAKE_API_KEY}")) {
        out.push("authorization");
    }
    if is("x-api-key", FAKE_API_KEY) {
        out.push("x-api-key");
    }
    out
}

/// Answers one request to `api`; `body` is the request body.
pub fn respond(api: Api, headers: &HeaderMap, body: &[u8]) -> Response<TBody> {
    let by = carried_by(headers);
    if by.is_empty() {
        let err = match api {
            Api::OpenAiChat => json!({"error": {
                "message": "fake API: no `Authorization: Bearer` or `x-api-key` with the real key",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            Api::AnthropicMessages => json!({"type": "error", "error": {
                "type": "authentication_error",
                "message": "fake API: no `Authorization: Bearer` or `x-api-key` with the real key"}}),
        };
        return json_response(401, &err);
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return json_response(400, &json!({"error": {"message": "body is not JSON"}}));
    };
    let model = req["model"].as_str().unwrap_or("unknown").to_owned();
    let text = format!("key via {}", by.join("+"));
    let stream = req["stream"].as_bool() == Some(true);
    match (api, stream) {
        (Api::OpenAiChat, false) => json_response(
            200,
            &json!({
                "id": "chatcmpl-fake1", "object": "chat.completion", "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            }),
        ),
        (Api::OpenAiChat, true) => {
            let chunk = |delta: Value, finish: Value| {
                let c = json!({
                    "id": "chatcmpl-fake1", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": null}]
                });
                format!("data: {c}\n\n")
            };
            let mut events = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            for word in split_text(&text) {
                events.push(chunk(json!({"content": word}), Value::Null));
            }
            events.push(chunk(json!({}), json!("stop")));
            events.push("data: [DONE]\n\n".to_owned());
            sse(events)
        }
        (Api::AnthropicMessages, false) => json_response(
            200,
            &json!({
                "id": "msg_fake1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 3}
            }),
        ),
        (Api::AnthropicMessages, true) => {
            let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
            let mut events = vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": "msg_fake1", "type": "message", "role": "assistant",
                        "model": model, "content": [], "stop_reason": null,
                        "stop_sequence": null,
                        "usage": {"input_tokens": 1, "output_tokens": 0}}}),
                ),
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}),
                ),
                event("ping", json!({"type": "ping"})),
            ];
            for word in split_text(&text) {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": word}}),
                ));
            }
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            events.push(event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": 3}}),
            ));
            events.push(event("message_stop", json!({"type": "message_stop"})));
            sse(events)
        }
    }
}

/// `key via x-api-key` → `["key ", "via ", "x-api-key"]`: several deltas that concatenate back.
fn split_text(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

fn json_response(status: u16, v: &Value) -> Response<TBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A `text/event-stream` response sending `events` one frame at a time, a little apart, so
/// they cross the proxy as separate chunks.
fn sse(events: Vec<String>) -> Response<TBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for e in events {
            if tx.send(Ok(Frame::data(Bytes::from(e)))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    r
}
