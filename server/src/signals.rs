//! The process signals the server answers: SIGTERM and SIGINT begin the graceful shutdown,
//! SIGHUP reloads the TLS files. All three are registered in one synchronous call made before
//! the server opens, binds or prints anything, so a signal at any later moment — even one
//! that arrives while the collections are still opening — takes the graceful path (drain,
//! shutdown checkpoint, exit 0) instead of the default action (death, no checkpoint).
//!
//! A signal that arrives before [`ProcessSignals::install`] is kept pending only if the
//! launcher blocked it; `install` then unblocks the three on the calling thread, so an
//! inherited signal mask can neither hide them nor let one through before its handler exists.
//! This module decides nothing about what a shutdown does; [`crate::server::serve`] does.

use std::future::Future;

/// Why the signal handlers could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("registering the {signal} handler: {source}")]
pub struct SignalError {
    /// The signal's name.
    pub signal: &'static str,
    /// Why.
    pub source: std::io::Error,
}

/// SIGTERM, SIGINT and SIGHUP, registered with the async runtime. Each signal that arrives
/// after [`ProcessSignals::install`] is remembered until it is read.
pub struct ProcessSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

/// The SIGHUPs received (reload requests), read by the server's TLS reloader.
pub struct Hangups {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ProcessSignals {
    /// Registers the handlers, then unblocks the three signals on this thread. Must run inside
    /// a Tokio runtime context (`Runtime::enter` or `block_on`), on the thread that then runs
    /// the server (the runtime's workers keep whatever mask they were started with: the signal
    /// reaches this thread).
    pub fn install() -> Result<ProcessSignals, SignalError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let register = |kind: SignalKind, name: &'static str| {
                signal(kind).map_err(|source| SignalError {
                    signal: name,
                    source,
                })
            };
            let signals = ProcessSignals {
                terminate: register(SignalKind::terminate(), "SIGTERM")?,
                interrupt: register(SignalKind::interrupt(), "SIGINT")?,
                hangup: register(SignalKind::hangup(), "SIGHUP")?,
            };
            unblock(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]).map_err(|source| {
                SignalError {
                    signal: "SIGTERM/SIGINT/SIGHUP mask",
                    source,
                }
            })?;
            Ok(signals)
        }
        #[cfg(not(unix))]
        Ok(ProcessSignals {})
    }

    /// Splits into the shutdown future (resolves on the first SIGTERM or SIGINT) and the
    /// SIGHUP stream. A second SIGTERM or SIGINT ends the process at once (exit code 130), as
    /// a second Ctrl-C does elsewhere: during a long start-up or a shutdown that waits on
    /// open requests, the operator keeps a way out short of SIGKILL (acknowledged writes are
    /// in the log either way). Must run inside a Tokio runtime context: a task watches the
    /// signals from now on.
    pub fn split(self) -> (impl Future<Output = ()> + Send + 'static, Hangups) {
        #[cfg(unix)]
        {
            let ProcessSignals {
                mut terminate,
                mut interrupt,
                hangup,
            } = self;
            let (first_tx, mut first_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let mut seen = 0;
                loop {
                    let which = tokio::select! {
                        _ = terminate.recv() => "SIGTERM",
                        _ = interrupt.recv() => "SIGINT",
                    };
                    seen += 1;
                    if seen == 1 {
                        tracing::info!(
                            "{which} received: shutting down (send it again to stop at once)"
                        );
                        let _ = first_tx.send(true);
                    } else {
                        let m = format!("{which} received again: stopping at once, without the shutdown checkpoint (acknowledged writes are in the write-ahead log)");
                        tracing::warn!("{m}");
                        eprintln!("{m}");
                        std::process::exit(130);
                    }
                }
            });
            let shutdown = async move {
                let _ = first_rx.wait_for(|s| *s).await;
            };
            (
                shutdown,
                Hangups {
                    hangup: Some(hangup),
                },
            )
        }
        #[cfg(not(unix))]
        {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            (shutdown, Hangups {})
        }
    }
}

impl Hangups {
    /// No SIGHUP ever (for servers run inside a test or another program).
    pub fn none() -> Hangups {
        Hangups {
            #[cfg(unix)]
            hangup: None,
        }
    }

    /// Waits for the next SIGHUP; `None` when there will be none.
    pub async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        if let Some(h) = &mut self.hangup {
            return h.recv().await;
        }
        None
    }
}

/// Removes `signals` from this thread's blocked set.
#[cfg(unix)]
fn unblock(signals: &[libc::c_int]) -> std::io::Result<()> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; the calls only
    // read it and change this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A SIGTERM sent to this process before anyone waits on the shutdown future is kept and
    /// resolves it (the start-up window the handlers exist for), and it does not kill the
    /// test process.
    #[test]
    fn a_signal_before_the_wait_is_kept() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let signals = ProcessSignals::install().expect("install");
        // SAFETY: raise sends a signal to this thread; a handler is installed above.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        let (shutdown, _hangups) = signals.split();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
                .await
                .expect("the SIGTERM raised before the wait resolves it");
        });
    }
}
