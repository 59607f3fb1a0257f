//! Where Redis is: one server, a cluster, or a primary watched by sentinels,
//! read from the URL and the TLS files.
//!
//! | URL | topology |
//! | --- | --- |
//! | `redis://[user:pass@]host:port[/db]`, `rediss://…`, `redis+unix://…` | one server |
//! | `redis+cluster://[user:pass@]h1:7000,h2:7001,…` (`rediss+cluster://` for TLS) | Redis Cluster, seeded by the listed nodes |
//! | `redis+sentinel://[user:pass@]s1:26379,s2:26379/<primary-name>[/db]` | the primary the sentinels name |
//!
//! Credentials in a cluster URL apply to every node; in a sentinel URL, to
//! the primary (the sentinels themselves are asked without AUTH). The TLS
//! files (a CA that replaces the public roots, and a client certificate and
//! key for mutual TLS) apply to every TLS connection; they need a TLS
//! scheme, so setting them for a plain URL is a configuration error rather
//! than a silently unencrypted connection.

use std::path::{Path, PathBuf};

use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::config::{redact_url, ConfigError};

/// The shape of the shared tier, as `/health/cache` reports it (`l2.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L2Kind {
    /// One Redis server.
    Single,
    /// Redis Cluster.
    Cluster,
    /// A primary found through Redis Sentinel.
    Sentinel,
}

impl L2Kind {
    /// `single`, `cluster` or `sentinel`.
    ///
    /// ```
    /// assert_eq!(apikey_cache::L2Kind::Cluster.as_str(), "cluster");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// A parsed Redis URL.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Single(ConnectionInfo),
    /// The seed nodes, credentials and TLS in each.
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        /// The sentinels, without credentials.
        sentinels: Vec<ConnectionInfo>,
        primary_name: String,
        /// Credentials and database for the primary.
        primary: ConnectionInfo,
    },
}

impl Target {
    pub(crate) fn kind(&self) -> L2Kind {
        match self {
            Self::Single(_) => L2Kind::Single,
            Self::Cluster(_) => L2Kind::Cluster,
            Self::Sentinel { .. } => L2Kind::Sentinel,
        }
    }

    /// Parses a Redis URL; the error says what was expected.
    pub(crate) fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |expected: &'static str| ConfigError::Invalid {
            name: "REDIS_URL",
            value: redact_url(url),
            expected,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(URL_FORMS));
        };
        let node = |scheme: &str, auth: &str, host: &str, tail: &str| {
            format!("{scheme}://{auth}{host}{tail}")
                .into_connection_info()
                .map_err(|_| invalid(URL_FORMS))
        };
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => url
                .into_connection_info()
                .map(Self::Single)
                .map_err(|_| invalid(URL_FORMS)),
            "redis+cluster" | "rediss+cluster" => {
                let data_scheme = scheme.trim_end_matches("+cluster");
                let (auth, hosts, path) = split_authority(rest);
                if !path.is_empty() && path != "/" {
                    return Err(invalid(
                        "redis+cluster://[user:pass@]host:port,host:port,... (a cluster has no databases)",
                    ));
                }
                let nodes = hosts
                    .split(',')
                    .map(|h| node(data_scheme, auth, h.trim(), ""))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self::Cluster(nodes))
            }
            "redis+sentinel" => {
                let (auth, hosts, path) = split_authority(rest);
                let mut parts = path.trim_start_matches('/').split('/');
                let name = parts.next().unwrap_or("");
                let db = parts.next().unwrap_or("");
                if name.is_empty() || parts.next().is_some() {
                    return Err(invalid(
                        "redis+sentinel://[user:pass@]host:port,host:port,.../<primary-name>[/db]",
                    ));
                }
                let sentinels = hosts
                    .split(',')
                    .map(|h| node("redis", "", h.trim(), ""))
                    .collect::<Result<Vec<_>, _>>()?;
                // The primary's address comes from the sentinels; this one
                // only carries its credentials and database.
                let tail = if db.is_empty() {
                    String::new()
                } else {
                    format!("/{db}")
                };
                let primary = node("redis", auth, "127.0.0.1:6379", &tail)?;
                Ok(Self::Sentinel {
                    sentinels,
                    primary_name: name.to_owned(),
                    primary,
                })
            }
            "rediss+sentinel" => Err(invalid(
                "redis+sentinel:// (TLS through sentinels is not supported; use rediss:// or rediss+cluster://)",
            )),
            _ => Err(invalid(URL_FORMS)),
        }
    }

    /// Whether connections to the data nodes use TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        let tls = |i: &ConnectionInfo| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. });
        match self {
            Self::Single(i) => tls(i),
            Self::Cluster(nodes) => nodes.iter().any(tls),
            Self::Sentinel { .. } => false,
        }
    }
}

const URL_FORMS: &str = "a redis://, rediss://, redis+unix://, redis+cluster://h1:p1,h2:p2 or redis+sentinel://s1:p1,s2:p2/<primary-name> URL";

/// `user:pass@h1:1,h2:2/path` -> (`user:pass@`, `h1:1,h2:2`, `/path`).
fn split_authority(rest: &str) -> (&str, &str, &str) {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..], path),
        None => ("", authority, path),
    }
}

/// PEM files for TLS connections to Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
}

impl TlsFiles {
    pub(crate) fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// Reads and checks the files: each readable, the CA and the client
    /// certificate holding at least one certificate, the key a private key,
    /// and the client certificate and key given together.
    pub(crate) fn load(&self) -> Result<Option<redis::TlsCertificates>, ConfigError> {
        if self.is_empty() {
            return Ok(None);
        }
        let root_cert = match &self.ca_cert {
            Some(path) => Some(read_certs("REDIS_CA_CERT", path)?),
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_certs("REDIS_CLIENT_CERT", cert)?,
                client_key: read_key(key)?,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: if self.client_cert.is_some() {
                        "REDIS_CLIENT_KEY"
                    } else {
                        "REDIS_CLIENT_CERT"
                    },
                    value: String::new(),
                    expected: "REDIS_CLIENT_CERT and REDIS_CLIENT_KEY set together",
                });
            }
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn read(name: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|_| ConfigError::Invalid {
        name,
        value: path.display().to_string(),
        expected,
    })
}

fn read_certs(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    const EXPECTED: &str = "a readable PEM file holding at least one certificate";
    let pem = read(name, path, EXPECTED)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(ConfigError::Invalid {
            name,
            value: path.display().to_string(),
            expected: EXPECTED,
        }),
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    const EXPECTED: &str = "a readable PEM file holding a private key";
    let pem = read("REDIS_CLIENT_KEY", path, EXPECTED)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(|_| pem)
        .map_err(|_| ConfigError::Invalid {
            name: "REDIS_CLIENT_KEY",
            value: path.display().to_string(),
            expected: EXPECTED,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: &ConnectionInfo) -> String {
        i.addr().to_string()
    }

    #[test]
    fn single_urls() {
        let t = Target::parse("redis://u:pw@h:7/2").unwrap();
        let Target::Single(i) = &t else { panic!() };
        assert_eq!(addr(i), "h:7");
        assert_eq!(i.redis_settings().db(), 2);
        assert_eq!(i.redis_settings().username(), Some("u"));
        assert!(!t.uses_tls());
        assert!(Target::parse("rediss://h:7").unwrap().uses_tls());
        assert_eq!(t.kind(), L2Kind::Single);
    }

    #[test]
    fn cluster_urls() {
        let t = Target::parse("redis+cluster://app:pw@a:7000, b:7001,c:7002").unwrap();
        let Target::Cluster(nodes) = &t else { panic!() };
        let addrs: Vec<_> = nodes.iter().map(addr).collect();
        assert_eq!(addrs, ["a:7000", "b:7001", "c:7002"]);
        assert!(nodes
            .iter()
            .all(|n| n.redis_settings().username() == Some("app")
                && n.redis_settings().password() == Some("pw")));
        assert!(!t.uses_tls());
        assert_eq!(t.kind(), L2Kind::Cluster);
        assert!(Target::parse("rediss+cluster://a:7000").unwrap().uses_tls());
        assert!(Target::parse("redis+cluster://a:7000/3").is_err());
        assert!(Target::parse("redis+cluster://a:7000,,b:1").is_err());
    }

    #[test]
    fn sentinel_urls() {
        let t = Target::parse("redis+sentinel://u:pw@s1:26379,s2:26380/mymaster/4").unwrap();
        let Target::Sentinel {
            sentinels,
            primary_name,
            primary,
        } = &t
        else {
            panic!()
        };
        let addrs: Vec<_> = sentinels.iter().map(addr).collect();
        assert_eq!(addrs, ["s1:26379", "s2:26380"]);
        assert!(sentinels
            .iter()
            .all(|s| s.redis_settings().password().is_none()));
        assert_eq!(primary_name, "mymaster");
        assert_eq!(primary.redis_settings().password(), Some("pw"));
        assert_eq!(primary.redis_settings().db(), 4);
        assert_eq!(t.kind(), L2Kind::Sentinel);
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:26379/a/1/x",
            "rediss+sentinel://s1:26379/a",
            "redis+sentinel://s1:26379/a/notanumber",
            "memcached://h:1",
            "h:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_redact_the_password() {
        let e = Target::parse("redis+sentinel://u:secret@s1:1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn tls_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("apikey-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a pem").unwrap();
        let missing = dir.join("missing.pem");
        let err = |files: TlsFiles| files.load().unwrap_err().to_string();
        assert!(err(TlsFiles {
            ca_cert: Some(missing.clone()),
            ..TlsFiles::default()
        })
        .contains("REDIS_CA_CERT"));
        assert!(err(TlsFiles {
            ca_cert: Some(garbage.clone()),
            ..TlsFiles::default()
        })
        .contains("at least one certificate"));
        assert!(err(TlsFiles {
            client_cert: Some(garbage.clone()),
            ..TlsFiles::default()
        })
        .contains("together"));
        assert!(TlsFiles::default().load().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
