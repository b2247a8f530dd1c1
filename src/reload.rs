//! Changing the configuration without a restart. SIGHUP, or a change to the configuration
//! file or to a file it names (keys, CAs, passwords, key directories), loads and checks the
//! whole file again and swaps it in; a file that fails the checks changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::proxy::{Proxy, Startup};

/// File events come in bursts (an editor's write, a Kubernetes volume swap): wait for quiet.
const SETTLE: Duration = Duration::from_millis(300);

/// Reloads on SIGHUP and on file changes until `shutdown`.
pub async fn watch(path: PathBuf, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let (events, mut changed) = mpsc::channel::<()>(1);
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events.try_send(());
            }
        }) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch files; reload with SIGHUP");
                None
            }
        };
    let mut watched = BTreeSet::new();
    // Compared with the files as they were loaded, so a change made before this task
    // started is not missed.
    let mut last = proxy.config().fingerprint;
    if let Some(watcher) = watcher.as_mut() {
        rewatch(watcher, &mut watched, &path, &proxy.config().files);
    }
    let mut hangup = hangup();
    // A change made between loading and watching raised no event: look once now.
    if config::fingerprint(&path, &proxy.config().files) != last {
        reload(&path, &proxy);
        last = config::fingerprint(&path, &proxy.config().files);
    }

    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = changed.recv() => false,
            () = next(&mut hangup) => true,
        };
        if !forced {
            tokio::time::sleep(SETTLE).await;
            // Drain the burst, then act only if some file's contents really changed.
            while changed.try_recv().is_ok() {}
            let now = config::fingerprint(&path, &proxy.config().files);
            if now == last {
                continue;
            }
        } else {
            tracing::info!("SIGHUP received, reloading the configuration");
        }
        reload(&path, &proxy);
        // After a rejected file too: wait for the next change rather than retrying.
        last = config::fingerprint(&path, &proxy.config().files);
        if let Some(watcher) = watcher.as_mut() {
            rewatch(watcher, &mut watched, &path, &proxy.config().files);
        }
    }
}

/// Loads the file again and, if it passes every check, puts it in place.
pub fn reload(path: &Path, proxy: &Proxy) -> bool {
    let ok = match config::load(path) {
        Ok(new) => {
            // Compared with the configuration the process started with, whose listeners
            // are the ones bound, not with the last one loaded.
            if Startup::of(&new) != *proxy.startup() {
                tracing::warn!(
                    "listener addresses or max_connections differ from those the proxy started with: \
                     they take effect only after a restart"
                );
            }
            match proxy.reload(new) {
                Ok(()) => {
                    tracing::info!(config = %path.display(), "configuration reloaded");
                    true
                }
                Err(err) => {
                    tracing::error!(error = %err, "configuration rejected, keeping the current one");
                    false
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "configuration rejected, keeping the current one");
            false
        }
    };
    proxy.metrics().config_reload(ok);
    ok
}

/// Watches the directories holding the files, so that files replaced by rename (as editors
/// and Kubernetes volumes do) are seen too.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    path: &Path,
    files: &[PathBuf],
) {
    let wanted: BTreeSet<PathBuf> = std::iter::once(path)
        .chain(files.iter().map(PathBuf::as_path))
        .map(|file| {
            if file.is_dir() {
                file.to_owned()
            } else {
                parent(file)
            }
        })
        .collect();
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(watched) {
        // Not recursive: a configuration in a project directory must not watch its tree.
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot watch for changes");
        }
    }
    *watched = wanted;
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGHUP");
            None
        }
    }
}

#[cfg(unix)]
async fn next(hangup: &mut Hangup) {
    match hangup {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup() -> Hangup {}

#[cfg(not(unix))]
async fn next(_: &mut Hangup) {
    std::future::pending().await
}
