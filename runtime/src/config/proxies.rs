//! [`ProxyRange`]: one entry of `trusted_proxies`, an address or a CIDR
//! range of addresses.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// A proxy's address (`10.0.0.5`, `::1`) or a range of them
/// (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyRange(IpNet);

impl ProxyRange {
    /// Whether `addr` is in the range (an IPv4 address reached over IPv6,
    /// `::ffff:a.b.c.d`, counts as that IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr.to_canonical())
    }
}

impl std::str::FromStr for ProxyRange {
    type Err = String;
    fn from_str(text: &str) -> Result<ProxyRange, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(ProxyRange(IpNet::from(addr)));
        }
        text.parse::<IpNet>().map(ProxyRange).map_err(|_| {
            format!(
                "'{text}' is not an IP address or a CIDR range (e.g. 127.0.0.1, 10.0.0.0/8, fd00::/8)"
            )
        })
    }
}

impl TryFrom<String> for ProxyRange {
    type Error = String;
    fn try_from(text: String) -> Result<ProxyRange, String> {
        text.parse()
    }
}

impl std::fmt::Display for ProxyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_and_ranges_of_both_families() {
        let one: ProxyRange = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        let net: ProxyRange = " 10.0.0.0/8 ".parse().unwrap();
        assert!(net.contains("10.200.3.4".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let v6: ProxyRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let error = "10.0.0.0/33".parse::<ProxyRange>().unwrap_err();
        assert!(
            error.contains("not an IP address or a CIDR range"),
            "{error}"
        );
        assert!("proxy.example.com".parse::<ProxyRange>().is_err());
    }

    #[test]
    fn the_config_file_takes_a_list_and_names_a_bad_entry() {
        let config: crate::config::Config =
            toml::from_str(r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]"#).unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        let error = toml::from_str::<crate::config::Config>(r#"trusted_proxies = ["nginx"]"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("'nginx' is not an IP address"), "{error}");
    }
}
