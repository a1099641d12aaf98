//! Build with `cargo build --release -p example-hello-action`, then copy
//! `target/release/libhello_action.so` into the server's actions folder.
//!
//! - `hello/greet` (public) `{"name": "Ada"}` -> `"Hello, Ada!"`
//! - `hello/divide` `{"a": 7, "b": 2}` -> `{"quotient": 3, "remainder": 1}`

use action_api::{Action, ActionError, Context, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Greet {
    name: String,
}

fn greet(ctx: &Context<'_>, p: Greet) -> Result<String, ActionError> {
    ctx.info(format_args!("greeting {}", p.name));
    Ok(format!("Hello, {}!", p.name))
}

#[derive(Deserialize)]
struct Divide {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
struct Quotient {
    quotient: i64,
    remainder: i64,
}

fn divide(_ctx: &Context<'_>, p: Divide) -> Result<Quotient, ActionError> {
    if p.b == 0 {
        return Err(ActionError::new(4000, "cannot divide by zero").with_data(p.a));
    }
    Ok(Quotient {
        quotient: p.a.wrapping_div(p.b),
        remainder: p.a.wrapping_rem(p.b),
    })
}

fn plugin() -> Plugin {
    Plugin::new("hello", env!("CARGO_PKG_VERSION"))
        .action(Action::new("hello/greet", greet).public())
        .action(Action::new("hello/divide", divide))
}

export_plugin!(plugin);
