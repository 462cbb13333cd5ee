//! `hangup bench`: the benches (the work is in the `hangup-bench` crate); this module
//! only turns each subcommand's flags into the bench's settings.

use std::process::ExitCode;

use hangup_bench::{
    CancelSettings, HttpPeerSettings, HttpSettings, LoadWorkerSettings, MassDeathSettings,
    ScaleSettings, SoakSettings, TakeoverSettings,
};

use crate::args::BenchCommand;

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Cancel(args) => hangup_bench::cancel(&CancelSettings {
            idle: args.idle,
            iterations: args.iterations,
            mode: args.mode,
            on_half_close: args.on_half_close,
            peer: args.peer,
            json: args.json,
        }),
        BenchCommand::Takeover(args) => hangup_bench::takeover(&TakeoverSettings {
            devices: args.devices,
            wave: args.wave,
            concurrency: args.concurrency,
            nodes: args.nodes,
            redis: args.redis,
            presence_durability: args.presence_durability,
            json: args.json,
        }),
        BenchCommand::Scale(args) => hangup_bench::scale(&ScaleSettings {
            connections: args.connections,
            heartbeat: args.heartbeat,
            instances: args.instances,
            target: args.target,
            server_pid: args.server_pid,
            hold: args.hold,
            per_worker: args.per_worker,
            concurrency: args.concurrency,
            dead_after: args.dead_after,
            io_threads: args.io_threads,
            ramp_limit: args.ramp_limit,
            peer: args.peer,
            repeat: args.repeat,
            netns: args.netns,
            json: args.json,
        }),
        BenchCommand::MassDeath(args) => hangup_bench::mass_death(&MassDeathSettings {
            connections: args.connections,
            dead_after: args.dead_after,
            heartbeat: args.heartbeat,
            instances: args.instances,
            per_worker: args.per_worker,
            concurrency: args.concurrency,
            probe_rate: args.probe_rate,
            ramp_limit: args.ramp_limit,
            json: args.json,
        }),
        BenchCommand::Http(args) => hangup_bench::http(&HttpSettings {
            trials: args.trials,
            miss_limit: args.miss_limit,
            give_up_after: args.give_up_after,
            half_close_work: args.half_close_work,
            throughput_time: args.throughput_time,
            throughput_connections: args.throughput_connections,
            throughput_runs: args.throughput_runs,
            throughput_path: args.throughput_path,
            json: args.json,
        }),
        BenchCommand::HttpPeer(args) => hangup_bench::http_peer(&HttpPeerSettings {
            server: args.server,
            listen: args.listen,
            finish_on_fin: args.finish_on_fin,
        }),
        BenchCommand::Soak(args) => hangup_bench::soak(&SoakSettings {
            duration: args.duration,
            restarts: args.restarts,
            clients: args.clients,
            rss_slack: args.rss_slack,
            json: args.json,
        }),
        BenchCommand::LoadWorker(args) => hangup_bench::load_worker(&LoadWorkerSettings {
            target: args.target,
            source: args.source,
            connections: args.connections,
            first_device: args.first_device,
            device_prefix: args.device_prefix,
            heartbeat: args.heartbeat,
            concurrency: args.concurrency,
            protocol: args.protocol,
            abort_on_close: args.abort_on_close,
        }),
    }
}
