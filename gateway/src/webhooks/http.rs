//! The HTTP client behind a small trait: the dispatcher only needs "POST these bytes, tell me
//! the status"; tests can put any client (or none) behind it.

use std::time::Duration;

use super::clock::BoxFuture;

/// How an attempt ended, short and free of internals (it is shown to the tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: a short reason such as `timeout` or `connection failed`.
    NoAnswer(&'static str),
}

pub trait HttpPoster: Send + Sync + 'static {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(&'static str, String)],
        body: Vec<u8>,
    ) -> BoxFuture<'a, PostOutcome>;
}

/// `reqwest` with rustls, a total timeout, and no redirects (a redirect would re-send the
/// signed body somewhere the tenant did not register).
#[derive(Clone)]
pub struct ReqwestPoster {
    client: reqwest::Client,
}

impl ReqwestPoster {
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ledgerline-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ReqwestPoster { client })
    }
}

impl HttpPoster for ReqwestPoster {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(&'static str, String)],
        body: Vec<u8>,
    ) -> BoxFuture<'a, PostOutcome> {
        Box::pin(async move {
            let mut request = self.client.post(url).body(body);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            match request.send().await {
                // The response body is not read: only the status acknowledges.
                Ok(response) => PostOutcome::Status(response.status().as_u16()),
                Err(e) if e.is_timeout() => PostOutcome::NoAnswer("timeout"),
                Err(e) if e.is_connect() => PostOutcome::NoAnswer("connection failed"),
                Err(e) if e.is_builder() => PostOutcome::NoAnswer("invalid URL"),
                Err(_) => PostOutcome::NoAnswer("request failed"),
            }
        })
    }
}
