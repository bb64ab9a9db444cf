//! Downloading pinned packages: verified by sha256, cached under the user's cache directory.
//! A cached file that no longer matches its pin is detected and fetched again.
use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Duration,
};

use lab_protocol::Cancel;
use sha2::{Digest, Sha256};

use crate::{VmError, catalog::Package};

/// A mirror that accepts no connection within this long is reported, not waited on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// From the request to the response's headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_mins(1);
/// The whole body of one package (the largest is about 100 MB).
const BODY_TIMEOUT: Duration = Duration::from_mins(30);

/// What a fetch reports while it works (the UI draws progress bars from it).
#[derive(Debug, Clone)]
pub enum FetchEvent {
    /// A cached copy matched its pin.
    Cached {
        name: String,
    },
    /// A cached copy did not match; it was deleted and is fetched again.
    Corrupt {
        name: String,
        actual: String,
    },
    Start {
        name: String,
        bytes: u64,
    },
    Progress {
        name: String,
        done: u64,
    },
    Done {
        name: String,
    },
}

/// Returns the path of the verified .deb, downloading it when needed.
pub fn package(
    mirror: &str,
    pkg: &Package,
    cache: &Path,
    cancel: &Cancel,
    on: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, VmError> {
    let dir = cache.join("debs");
    fs::create_dir_all(&dir).map_err(VmError::io("cannot create", &dir))?;
    let dest = dir.join(pkg.file_name());
    if dest.exists() {
        let actual = sha256_file(&dest)?;
        if actual == pkg.sha256 {
            on(FetchEvent::Cached { name: pkg.name.clone() });
            return Ok(dest);
        }
        on(FetchEvent::Corrupt { name: pkg.name.clone(), actual });
        fs::remove_file(&dest).map_err(VmError::io("cannot remove", &dest))?;
    }
    let url = format!("{}/{}", mirror.trim_end_matches('/'), pkg.path);
    let part = dest.with_extension("deb.part");
    let result = download(&url, pkg, &part, cancel, on);
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    let actual = result?;
    if actual != pkg.sha256 {
        let _ = fs::remove_file(&part);
        return Err(VmError::Checksum { url, expected: pkg.sha256.clone(), actual });
    }
    fs::rename(&part, &dest).map_err(VmError::io("cannot move into place", &dest))?;
    on(FetchEvent::Done { name: pkg.name.clone() });
    Ok(dest)
}

/// Streams `url` into `part`, hashing as it goes; returns the sha256.
/// What the download thread reports.
enum Progress {
    Started,
    Bytes(u64),
    Finished(Result<String, VmError>),
}

/// Downloads on a thread of its own, so a stalled mirror never holds a Ctrl-C: the caller
/// polls `cancel` and walks away (the thread dies with the process; the `.part` is removed).
fn download(
    url: &str,
    pkg: &Package,
    part: &Path,
    cancel: &Cancel,
    on: &mut dyn FnMut(FetchEvent),
) -> Result<String, VmError> {
    let (tx, rx) = mpsc::channel();
    let (url_owned, part_owned) = (url.to_owned(), part.to_owned());
    thread::spawn(move || {
        let result = fetch_to(&url_owned, &part_owned, &tx);
        let _ = tx.send(Progress::Finished(result));
    });
    loop {
        if cancel.is_cancelled() {
            return Err(VmError::Cancelled);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Progress::Started) => on(FetchEvent::Start { name: pkg.name.clone(), bytes: pkg.size }),
            Ok(Progress::Bytes(done)) => on(FetchEvent::Progress { name: pkg.name.clone(), done }),
            Ok(Progress::Finished(result)) => return result,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(VmError::Broken {
                    what: format!("the download of {url}"),
                    detail: "its thread died".into(),
                });
            }
        }
    }
}

fn fetch_to(url: &str, part: &Path, tx: &mpsc::Sender<Progress>) -> Result<String, VmError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(BODY_TIMEOUT))
        .build()
        .into();
    let mut resp =
        agent.get(url).call().map_err(|e| VmError::Download { url: url.to_owned(), source: Box::new(e) })?;
    let _ = tx.send(Progress::Started);
    let mut body = resp.body_mut().as_reader();
    let mut out = File::create(part).map_err(VmError::io("cannot create", part))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(VmError::io("cannot read the download of", part))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(VmError::io("cannot write", part))?;
        done += n as u64;
        if tx.send(Progress::Bytes(done)).is_err() {
            // Nobody waits any more (cancelled): stop.
            return Err(VmError::Cancelled);
        }
    }
    out.sync_all().map_err(VmError::io("cannot sync", part))?;
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, VmError> {
    let mut f = File::open(path).map_err(VmError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut HashWriter(&mut hasher)).map_err(VmError::io("cannot read", path))?;
    Ok(hex::encode(hasher.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_files() {
        let p = std::env::temp_dir().join(format!("sidecarless-hash-{}", std::process::id()));
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_file(p).unwrap();
    }
}
