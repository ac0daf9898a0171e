//! The HTTP client behind a small trait: the dispatcher only needs "POST these bytes, tell me
//! the status"; tests can put any client (or none) behind it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
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

/// Which destinations a delivery may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Only public addresses: a tenant's URL must not reach the platform's own network
    /// (loopback, private, link-local such as cloud metadata, CGNAT, unique-local).
    PublicOnly,
    /// Any address (tests, or a deployment whose receivers live on a private network).
    Any,
}

/// `reqwest` with rustls, a total timeout, no redirects (a redirect would re-send the
/// signed body somewhere the tenant did not register), and, under `Targets::PublicOnly`, a
/// resolver that drops non-public addresses, checked at connection time so a DNS answer
/// cannot change between the check and the connection.
#[derive(Clone)]
pub struct ReqwestPoster {
    client: reqwest::Client,
    targets: Targets,
}

impl ReqwestPoster {
    pub fn new(timeout: Duration, targets: Targets) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ledgerline-webhooks/", env!("CARGO_PKG_VERSION")));
        if targets == Targets::PublicOnly {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(ReqwestPoster {
            client: builder.build()?,
            targets,
        })
    }

    /// An IP-literal host is not resolved, so it is checked here.
    fn refused(&self, url: &str) -> bool {
        if self.targets == Targets::Any {
            return false;
        }
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let host = parsed.host_str().unwrap_or("");
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => !is_public(ip),
            Err(_) => false,
        }
    }
}

/// The refusal a resolver reports, found again in the error chain to name it.
#[derive(Debug)]
struct NotAllowed;

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("destination not allowed")
    }
}

impl std::error::Error for NotAllowed {}

struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotAllowed) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn refused_by_resolver(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.is::<NotAllowed>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether an address is on the public internet (not loopback, private, link-local,
/// shared, unique-local, multicast, documentation or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8)
}

impl HttpPoster for ReqwestPoster {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(&'static str, String)],
        body: Vec<u8>,
    ) -> BoxFuture<'a, PostOutcome> {
        Box::pin(async move {
            if self.refused(url) {
                return PostOutcome::NoAnswer("destination not allowed");
            }
            let mut request = self.client.post(url).body(body);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            match request.send().await {
                // The response body is not read: only the status acknowledges.
                Ok(response) => PostOutcome::Status(response.status().as_u16()),
                Err(e) if refused_by_resolver(&e) => PostOutcome::NoAnswer("destination not allowed"),
                Err(e) if e.is_timeout() => PostOutcome::NoAnswer("timeout"),
                Err(e) if e.is_connect() => PostOutcome::NoAnswer("connection failed"),
                Err(e) if e.is_builder() => PostOutcome::NoAnswer("invalid URL"),
                Err(_) => PostOutcome::NoAnswer("request failed"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn public_only_refuses_loopback_by_literal_and_by_name() {
        let poster = ReqwestPoster::new(Duration::from_secs(5), Targets::PublicOnly).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://127.0.0.1:{port}/h"),
            format!("http://localhost:{port}/h"),
            format!("http://[::1]:{port}/h"),
        ] {
            let outcome = poster.post(&url, &[], b"{}".to_vec()).await;
            assert_eq!(outcome, PostOutcome::NoAnswer("destination not allowed"), "{url}");
        }
    }
}
