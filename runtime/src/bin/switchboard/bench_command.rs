//! `switchboard bench`: runs one load scenario ([`crate::bench`]) on a
//! multi-threaded runtime (one thread per core it may use) and prints its
//! report; exits non-zero when most operations failed.

use crate::args::{BenchArgs, BenchScenario};
use crate::settings::read_secret_file;
use anyhow::Context;
use switchboard::config::Config;

pub(crate) fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::bench::{client::Target, conns, fanout, rpc};
    let secret = match (&args.jwt_secret, &args.jwt_secret_file) {
        (_, Some(file)) => {
            let mut config = Config {
                jwt_secret_file: Some(file.clone()),
                ..Config::default()
            };
            read_secret_file(&mut config)?;
            config.jwt_secret.map(|s| s.expose().to_owned())
        }
        (Some(secret), None) => Some(secret.clone()),
        // Signed in with the development secret when there is one (a
        // server started with no key uses it), anonymous otherwise.
        (None, None) => {
            switchboard::auth::dev_secret::load(&switchboard::auth::dev_secret::location())?
        }
    };
    let target = Target {
        url: args.url,
        secret,
        token: args.token,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let pids = args.pid;
    // Memory and liveness are read from one process.
    let pid = match pids.as_slice() {
        [] => None,
        [one] => Some(*one),
        _ if matches!(
            args.scenario,
            BenchScenario::Rpc { .. } | BenchScenario::Fanout { .. }
        ) =>
        {
            None
        }
        _ => anyhow::bail!(
            "only rpc and fanout add up the CPU of several processes; give this scenario one --pid"
        ),
    };
    let json = args.json;
    // Stops the spinners when the run is over, before the runtime goes.
    let _busy_poll = args
        .busy_poll
        .then(|| crate::bench::busy_poll::start(&runtime, threads));
    runtime.block_on(async move {
        match args.scenario {
            BenchScenario::Rpc {
                conns,
                inflight,
                method,
                params,
                payload,
                duration,
            } => {
                let scenario = rpc::RpcScenario {
                    conns,
                    inflight,
                    method,
                    params,
                    payload,
                    duration,
                    pids,
                };
                let report = rpc::run(&target, &scenario).await?;
                print_report(&report, json)
            }
            BenchScenario::Fanout {
                rooms,
                subscribers,
                rate,
                payload,
                duration,
                subscriber_urls,
            } => {
                let scenario = fanout::FanoutScenario {
                    rooms,
                    subscribers,
                    rate,
                    payload,
                    duration,
                    subscriber_urls,
                    pids,
                };
                let report = fanout::run(&target, &scenario).await?;
                print_report(&report, json)
            }
            BenchScenario::Reload {
                target: file,
                a,
                b,
                method,
                swaps,
                conns,
                inflight,
                duration,
                windows,
            } => {
                let scenario = crate::bench::reload::ReloadScenario {
                    target: file,
                    builds: [a, b],
                    method,
                    swaps,
                    conns,
                    inflight,
                    duration,
                    windows,
                };
                let report = crate::bench::reload::run(&target, &scenario).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            BenchScenario::Soak(soak) => {
                let scenario = crate::bench::soak::SoakScenario {
                    duration: soak.duration,
                    plan: crate::bench::soak::shared::LoadPlan {
                        conns: soak.conns,
                        rate: soak.rate,
                        storm_percent: soak.storm_percent.min(100),
                    },
                    rooms: soak.rooms,
                    storm_every: soak.storm_every,
                    reload: soak
                        .reload_target
                        .map(|target| crate::bench::soak::reloads::ReloadPlan {
                            target,
                            builds: soak.reload_builds,
                            every: soak.reload_every,
                        }),
                    hostile_every: soak.hostile_every,
                    max_message_bytes: soak.max_message_bytes,
                    rss_slope_percent: soak.rss_slope_percent,
                    rss_slope_mib: soak.rss_slope_mib,
                    pid,
                };
                let report = crate::bench::soak::run(&target, &scenario).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{report}");
                }
                match report.failed() {
                    0 => Ok(()),
                    failed => anyhow::bail!("{failed} of the soak's checks failed"),
                }
            }
            BenchScenario::Conns { count, hold } => {
                let report = conns::run(&target, count, pid, hold).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "connections {}  rss before {:?} KiB  after {:?} KiB  per connection {:?} bytes  opened in {:.1} s",
                        report.connections, report.rss_before_kib, report.rss_after_kib, report.bytes_per_connection, report.open_secs
                    );
                    if let Some(alive) = report.alive_after_hold {
                        println!("after holding: {alive} of {} still answered", report.connections);
                    }
                }
                Ok(())
            }
        }
    })
}

pub(crate) fn print_report(report: &crate::bench::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    report.check()
}
