//! `perceiver convert`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use perceiver::checkpoint::export::{write_model_dir, ExportOptions};
use perceiver::{Activation, Architecture, Loader};

use crate::model::HubArgs;

#[derive(Args)]
#[command(
    after_help = "Example:\n  perceiver convert language_perceiver_io_bytes.pickle --out language-perceiver\n  \
perceiver fill-mask --model language-perceiver \"This is an incomplete sentence where some words are[MASK:9]\"\n\n\
The directory holds config.json (with \"architectures\") and model.safetensors under transformers' \
names: transformers' PerceiverForMaskedLM.from_pretrained loads it."
)]
pub struct ConvertArgs {
    /// The model to convert: a DeepMind checkpoint (.pickle, .pystate) above all; any model
    /// --model takes (a directory, a hub id, `default`) is written the same way.
    source: String,

    /// The directory to write config.json and model.safetensors into (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// With a DeepMind checkpoint: a transformers config.json for what its shapes cannot tell
    /// (heads, blocks, query residual, activation). Default: DeepMind's Colab values.
    #[arg(long, value_name = "FILE", env = "PERCEIVER_MODEL_CONFIG")]
    model_config: Option<PathBuf>,

    /// The GELU the written config.json names: gelu_new (the tanh approximation DeepMind's
    /// code computes and the weights were trained with: the directory gives DeepMind's numbers)
    /// or gelu (exact, as the config.json of deepmind/language-perceiver on the hub says: the
    /// hub's numbers, up to ~1e-3 away). Default: the source's own, which for a DeepMind
    /// checkpoint without --model-config is gelu_new.
    #[arg(
        long,
        value_parser = PossibleValuesParser::new(["gelu_new", "gelu"]).map(|name| {
            if name == "gelu" { Activation::GeluErf } else { Activation::GeluTanh }
        })
    )]
    activation: Option<Activation>,

    /// Write into a directory that already holds files (its config.json, model.safetensors
    /// and preprocessor_config.json are replaced, or that last removed for a model without
    /// one; other files left).
    #[arg(long)]
    force: bool,

    #[command(flatten)]
    hub: HubArgs,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let mut loader = Loader::new(args.source.as_str()).options(args.hub.options());
    if let Some(config) = &args.model_config {
        loader = loader.model_config(config);
    }
    // The source's own preprocessor_config.json is copied: defaults would not be its settings
    // (nor, for a model of one image size, a size it takes).
    let (checkpoint, preprocessor_config) = loader
        .checkpoint_with_preprocessor_config()
        .with_context(|| format!("cannot load model {}", args.source))?;
    let options = ExportOptions {
        activation: args.activation,
        overwrite: args.force,
        preprocessor_config,
    };
    let written = write_model_dir(&checkpoint, &args.out, &options).map_err(|e| match e {
        // It names the file already.
        e @ perceiver::Error::Write { .. } => anyhow::Error::from(e),
        e => anyhow::Error::from(e).context(format!("cannot write {}", args.out.display())),
    })?;
    let c = checkpoint.config();
    let activation = args.activation.unwrap_or(c.hidden_act);
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    // What the written config carries that transformers' classes do not follow.
    let mut notes = String::new();
    if c.stem_padding().ok() == Some(perceiver::config::StemPadding::Same) {
        notes.push_str("; stem_padding \"same\" (DeepMind's; transformers' stem pads otherwise)");
    }
    if Architecture::of(c).is_ok_and(|a| a.is_classifier()) && !c.classifier_query_residual() {
        notes.push_str("; decoder_use_query_residual false (DeepMind's; transformers' decoder adds it)");
    }
    outln!(
        "wrote {} ({} parameters; hidden_act {}{notes})",
        files.join(", "),
        c.num_parameters(),
        activation.name()
    );
    Ok(())
}
