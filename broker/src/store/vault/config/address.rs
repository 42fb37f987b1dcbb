//! Where Vault is: one `address` (a node, or a Service that follows the
//! active node), or `addresses` naming every node of an HA cluster, which
//! the store probes to find and follow the active one.

use super::error::ConfigError;

/// The most nodes `addresses` may name: a raft cluster has 3 or 5 voters,
/// plus a few non-voters; every failover probes them all.
pub const MAX_ADDRESSES: usize = 16;

/// The node addresses of a configuration: `addresses` if given, else the
/// one `address`. Validated by [`validate`].
pub(super) fn nodes<'a>(address: &'a str, addresses: &'a [String]) -> Vec<&'a str> {
    if addresses.is_empty() {
        vec![address]
    } else {
        addresses.iter().map(String::as_str).collect()
    }
}

/// Checks `address` and `addresses`: exactly one of them, each address
/// `https://` (or `http://` to this machine only), none twice.
pub(super) fn validate(address: &str, addresses: &[String]) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    match (address.is_empty(), addresses.is_empty()) {
        (true, true) => return invalid("address (or addresses) is required".into()),
        (false, false) => {
            return invalid(
                "give either address (one node or a Service) or addresses (every node of a \
                 cluster), not both"
                    .into(),
            );
        }
        _ => {}
    }
    if addresses.len() > MAX_ADDRESSES {
        return invalid(format!(
            "addresses names {} nodes; at most {MAX_ADDRESSES}",
            addresses.len()
        ));
    }
    for (i, a) in addresses.iter().enumerate() {
        if addresses[..i].contains(a) {
            return invalid(format!("addresses names {a} twice"));
        }
    }
    nodes(address, addresses).into_iter().try_for_each(one)
}

/// One node's address.
fn one(address: &str) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return invalid(format!(
            "address {address:?} must start with http:// or https://"
        ));
    }
    // Tokens, secret values and leases cross this connection: in clear
    // only to this machine (an agent or a test server on loopback).
    if address.starts_with("http://") && !is_loopback_url(address) {
        return invalid(format!(
            "address {address}: http:// is allowed only to a loopback address (127.0.0.0/8, [::1], localhost); use https://"
        ));
    }
    match url::Url::parse(address) {
        Ok(url) if url.username().is_empty() && url.password().is_none() => Ok(()),
        Ok(_) => invalid(format!(
            "address {address:?}: no user name or password in a Vault address"
        )),
        Err(e) => invalid(format!("address {address:?}: {e}")),
    }
}

/// Whether `address`'s host is this machine: 127.0.0.0/8, `::1` or
/// `localhost`.
fn is_loopback_url(address: &str) -> bool {
    match url::Url::parse(address)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_http_is_refused_off_this_machine() {
        for local in [
            "http://127.0.0.1:8200",
            "http://127.3.4.5:8200",
            "http://[::1]:8200",
            "http://localhost:8200",
            "https://vault.example:8200",
            "https://10.0.0.7:8200",
        ] {
            validate(local, &[]).unwrap_or_else(|e| panic!("{local}: {e}"));
            validate("", &[local.to_string()]).unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        for remote in [
            "http://vault.example:8200",
            "http://10.0.0.7:8200",
            "http://[fd00::1]:8200",
            "http://localhost.example:8200",
            "http://127.0.0.1.nip.io:8200",
        ] {
            let error = validate(remote, &[]).unwrap_err().to_string();
            assert!(error.contains("loopback"), "{remote}: {error}");
            // Every one of several addresses is checked, not only the first.
            let several = [
                "https://vault-0.example:8200".to_string(),
                remote.to_string(),
            ];
            let error = validate("", &several).unwrap_err().to_string();
            assert!(error.contains("loopback"), "{remote}: {error}");
        }
    }

    #[test]
    fn address_and_addresses_exclude_each_other_and_one_is_needed() {
        let a = "https://vault-0.example:8200";
        let list = vec![a.to_string(), "https://vault-1.example:8200".to_string()];
        validate("", &list).unwrap();
        assert_eq!(nodes("", &list), [a, "https://vault-1.example:8200"]);
        assert_eq!(nodes(a, &[]), [a]);
        for (address, addresses) in [("", vec![]), (a, list.clone())] {
            assert!(
                validate(address, &addresses).is_err(),
                "{address} {addresses:?}"
            );
        }
        let twice = vec![a.to_string(), a.to_string()];
        assert!(
            validate("", &twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let many: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|i| format!("https://vault-{i}.example:8200"))
            .collect();
        assert!(validate("", &many).is_err());
        assert!(validate("https://user:pw@vault.example:8200", &[]).is_err());
        assert!(validate("ftp://vault.example", &[]).is_err());
    }
}
