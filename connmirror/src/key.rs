//! The shared key: one secret file, mode 0600, on every node of a cluster.
//!
//! It authenticates all three of connmirror's protocols between hosts: the
//! heartbeats ([`crate::ownership::heartbeat`], HMAC-SHA256 per datagram), the
//! planned-migration frames ([`crate::failover::migrate`], HMAC-SHA256 per
//! frame), and the replication channel ([`crate::replication::channel`], whose
//! Noise pre-shared key is derived from it with [`Key::derive`]). It lives
//! apart from all three so that none of them owns the others' secret.
//!
//! Uses nothing else in the crate.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use thiserror::Error;

/// Shortest key accepted, in bytes.
pub const MIN_KEY: usize = 16;
/// Length of an HMAC-SHA256 tag, in bytes.
pub const MAC_LEN: usize = 32;

/// The shared secret both ends hold.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key file was refused.
#[derive(Debug, Error)]
pub enum KeyError {
    /// It could not be read.
    #[error("reading the key file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed (in the message, not chained).
        error: io::Error,
    },
    /// Others may read or write it.
    #[error("the key file {path} has mode {mode:04o}; it must be 0600 (run: chmod 600 {path})")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Too short to be a key.
    #[error("the key file {path} holds {len} bytes; a key needs at least {MIN_KEY}")]
    Short {
        /// The file.
        path: PathBuf,
        /// Its length (trailing newline removed).
        len: usize,
    },
}

impl Key {
    /// Reads the key file at `path`. Its mode must be exactly 0600; one
    /// trailing newline is ignored.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let read = |error| KeyError::Read {
            path: path.to_owned(),
            error,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
        if mode != 0o600 {
            return Err(KeyError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = std::fs::read(path).map_err(read)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY {
            return Err(KeyError::Short {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(Key(bytes))
    }

    /// A key from raw bytes (tests, tools).
    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }

    /// A 32-byte key for another use of the shared secret (the replication
    /// channel's pre-shared key): HMAC-SHA256 of `label` under this key, so the
    /// derived key reveals nothing about the file's bytes.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA256 of `bytes` under this key (RFC 2104).
    pub fn sign(&self, bytes: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `bytes` under this key (constant time).
    pub fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }

    /// A fresh HMAC-SHA256 state under this key, for a message signed in parts.
    pub fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn key_files_must_be_owner_only_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            Key::load(&path).unwrap_err().to_string(),
            format!(
                "the key file {0} has mode 0644; it must be 0600 (run: chmod 600 {0})",
                path.display()
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Key::load(&path).is_ok());
        std::fs::write(&path, b"short\n").unwrap();
        assert_eq!(
            Key::load(&path).unwrap_err().to_string(),
            format!(
                "the key file {} holds 5 bytes; a key needs at least 16",
                path.display()
            )
        );
    }
}
