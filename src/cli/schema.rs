//! `reconcile schema [environment|app]`: print the embedded JSON Schemas.

use clap::ValueEnum;

use super::ExitCode;
use crate::spec::schema;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which schema; both (as one JSON object keyed by kind) when omitted.
    pub kind: Option<Which>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Environment,
    App,
    Plan,
}

/// # Errors
/// Never in practice: the schemas are embedded and tested.
pub fn exec(args: &Args) -> anyhow::Result<ExitCode> {
    let text = match args.kind {
        Some(Which::Environment) => schema::ENVIRONMENT.to_string(),
        Some(Which::App) => schema::APP.to_string(),
        Some(Which::Plan) => schema::PLAN.to_string(),
        None => {
            let env: serde_json::Value = serde_json::from_str(schema::ENVIRONMENT)?;
            let app: serde_json::Value = serde_json::from_str(schema::APP)?;
            let plan: serde_json::Value = serde_json::from_str(schema::PLAN)?;
            serde_json::to_string_pretty(&serde_json::json!({"environment": env, "app": app, "plan": plan}))? + "\n"
        }
    };
    print!("{text}");
    Ok(ExitCode::Ok)
}
