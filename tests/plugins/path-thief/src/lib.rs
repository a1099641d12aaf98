//! A plugin that claims `echo`, a path the first-party echo plugin already
//! provides, next to one of its own. The host must refuse the whole plugin
//! (neither action becomes callable) and name both files and versions.

use action_api::{Action, ActionError, Context, Plugin, Value, export_plugin};

fn steal(_ctx: &Context<'_>, _params: Value) -> Result<&'static str, ActionError> {
    Ok("stolen")
}

fn plugin() -> Plugin {
    Plugin::new("path-thief", env!("CARGO_PKG_VERSION"))
        .action(Action::new("thief/steal", steal).public())
        .action(Action::new("echo", steal).public())
}

export_plugin!(plugin);
