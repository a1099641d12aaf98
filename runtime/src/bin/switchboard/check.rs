//! `switchboard check`: loads one plugin file the way the server would
//! and describes it, or says why it cannot load (also the server's
//! preflight child, with `--in-place`).

use crate::args::CheckArgs;

pub(crate) fn check(args: CheckArgs) -> anyhow::Result<()> {
    if args.in_place {
        switchboard::plugins::preflight::become_preflight_child();
    }
    let shadow_base = std::env::temp_dir().join(format!(
        "switchboard-check-{}",
        switchboard::sys::effective_uid()
    ));
    let report = switchboard::describe::check(
        &args.file,
        (!args.in_place).then_some(shadow_base.as_path()),
    );
    if args.in_place {
        // For the server's preflight: one marked line, so whatever the
        // plugin itself printed while loading is not taken for the report.
        println!(
            "{}{}",
            switchboard::plugins::preflight::REPORT_MARKER,
            serde_json::to_string(&report)?
        );
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        print!("{report}");
    } else {
        eprintln!("{report}");
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
