//! gantry's build caches, which let a rebuild with nothing changed skip all the work.
//!
//! - [`StatCache`] (`$GANTRY_HOME/stat-v1/`): maps a file to its sha256 without reading it
//!   while its [`StatKey`] (device, inode, size, mtime, ctime) is unchanged, so a no-op
//!   rebuild does not rehash its inputs. One compact binary file per project; see [`stat`].
//! - [`ActionCache`] (`$GANTRY_HOME/cache-v1/`): maps a [`CacheKey`], built with a
//!   [`KeyHasher`] from everything an action depends on, to the action's result and the
//!   descriptors of the blobs it produced, so a no-op rebuild does no tar and no compression.
//!   One canonical JSON file per key; see [`action`].
//!
//! Both caches are safe to delete at any time and never fail a build because their files are
//! damaged: anything unreadable is a miss. They may lose entries (concurrent saves, crashes),
//! but never answer with a wrong digest or another key's entry.
//!
//! The library never prints; it logs at debug level through `tracing`.

pub mod action;
mod error;
mod fsutil;
pub mod stat;

pub use action::{ActionCache, CACHE_FORMAT_VERSION, CacheKey, Entry, KeyHasher};
pub use error::{Error, Result};
pub use stat::{StatCache, StatKey, hash_file};
