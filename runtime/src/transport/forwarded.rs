//! The client's address behind a reverse proxy: from the `Forwarded`
//! (RFC 7239) or `X-Forwarded-For` header, believed only when the TCP
//! peer is one of the configured `trusted_proxies`.
//!
//! Each proxy appends the address it received the request from, so the
//! list is read from the right: the first address that is not itself a
//! trusted proxy is the client (anything left of it was written by the
//! client and proves nothing). An entry that is not an address
//! (`unknown`, an obfuscated `_name`, garbage) stops the walk, and the
//! last trusted hop is taken instead: never an address the client chose.

use crate::config::ProxyRange;
use hyper::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// The client's address: `peer` itself, unless `peer` is a trusted proxy
/// whose forwarding headers name someone else. A port is kept only when
/// `Forwarded` gives one; otherwise it is 0 (`X-Forwarded-For` never
/// carries one).
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[ProxyRange]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let hops = match forwarded_for(headers) {
        Some(hops) => hops,
        None => match x_forwarded_for(headers) {
            Some(hops) => hops,
            None => return peer,
        },
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = hop else {
            // Not an address: the nearest trusted hop is all we know.
            return client;
        };
        client = *addr;
        if !is_trusted(addr.ip()) {
            return client;
        }
    }
    // Every hop is a trusted proxy: the farthest one is the client.
    client
}

/// The `for=` of every element of every `Forwarded` header, in order;
/// `None` when there is no such header. An element without `for=`, or
/// one that is not an address, is a `None` hop.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<SocketAddr>>> {
    let mut hops = Vec::new();
    let mut any = false;
    for value in headers.get_all(hyper::header::FORWARDED) {
        any = true;
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            });
            hops.push(node.and_then(parse_node));
        }
    }
    any.then_some(hops)
}

/// Every address of every `X-Forwarded-For` header, in order; `None` when
/// there is no such header.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<SocketAddr>>> {
    let mut hops = Vec::new();
    let mut any = false;
    for value in headers.get_all("x-forwarded-for") {
        any = true;
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        hops.extend(text.split(',').map(|a| {
            a.trim()
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 0))
        }));
    }
    any.then_some(hops)
}

/// A `Forwarded` node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`; `None` for `unknown`, an obfuscated `_name` or
/// anything else.
fn parse_node(node: &str) -> Option<SocketAddr> {
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr);
    }
    let host = node
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(node);
    host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ranges(list: &[&str]) -> Vec<ProxyRange> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn client(peer: &str, pairs: &[(&'static str, &str)], trusted: &[&str]) -> String {
        client_address(peer.parse().unwrap(), &headers(pairs), &ranges(trusted)).to_string()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let xff = [("x-forwarded-for", "203.0.113.7")];
        assert_eq!(client("198.51.100.2:5000", &xff, &[]), "198.51.100.2:5000");
        assert_eq!(
            client("198.51.100.2:5000", &xff, &["127.0.0.1"]),
            "198.51.100.2:5000"
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = ["127.0.0.1"];
        assert_eq!(
            client(
                "127.0.0.1:6000",
                &[("x-forwarded-for", "203.0.113.7")],
                &trusted
            ),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(
                "127.0.0.1:6000",
                &[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")],
                &trusted
            ),
            "[2001:db8::7]:4711"
        );
        // Forwarded wins over X-Forwarded-For; no header at all: the peer.
        assert_eq!(
            client(
                "127.0.0.1:6000",
                &[
                    ("forwarded", "for=192.0.2.60"),
                    ("x-forwarded-for", "203.0.113.7")
                ],
                &trusted
            ),
            "192.0.2.60:0"
        );
        assert_eq!(client("127.0.0.1:6000", &[], &trusted), "127.0.0.1:6000");
    }

    #[test]
    fn the_walk_skips_trusted_hops_and_never_believes_the_client() {
        let trusted = ["127.0.0.1", "10.0.0.0/8"];
        // The client wrote 1.1.1.1 itself; the edge proxy (10.0.0.5)
        // appended the address it saw, 203.0.113.7.
        let chain = [("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.5")];
        assert_eq!(client("127.0.0.1:1", &chain, &trusted), "203.0.113.7:0");
        // Split over two headers, and in Forwarded's syntax.
        let split = [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.5"),
        ];
        assert_eq!(client("127.0.0.1:1", &split, &trusted), "203.0.113.7:0");
        let forwarded = [(
            "forwarded",
            "for=1.1.1.1, for=203.0.113.7;by=10.0.0.5, for=10.0.0.5",
        )];
        assert_eq!(client("127.0.0.1:1", &forwarded, &trusted), "203.0.113.7:0");
        // Only trusted hops: the farthest is the client.
        let inside = [("x-forwarded-for", "10.1.1.1, 10.0.0.5")];
        assert_eq!(client("127.0.0.1:1", &inside, &trusted), "10.1.1.1:0");
    }

    #[test]
    fn an_entry_that_is_not_an_address_stops_at_the_last_trusted_hop() {
        let trusted = ["127.0.0.1", "10.0.0.0/8"];
        let garbage = [("x-forwarded-for", "203.0.113.7, not-an-ip, 10.0.0.5")];
        assert_eq!(client("127.0.0.1:1", &garbage, &trusted), "10.0.0.5:0");
        let unknown = [("forwarded", "for=unknown")];
        assert_eq!(client("127.0.0.1:9", &unknown, &trusted), "127.0.0.1:9");
        let hidden = [("forwarded", "for=_hidden, for=10.0.0.5")];
        assert_eq!(client("127.0.0.1:9", &hidden, &trusted), "10.0.0.5:0");
    }
}
