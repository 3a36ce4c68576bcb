use std::collections::HashMap;

use super::*;
use crate::sim::tokens::output_token;

fn generate(spec: &WorkloadSpec, count: usize) -> Workload {
    spec.generate(count, 11).expect("valid workload")
}

fn small_shared_prefix() -> WorkloadSpec {
    WorkloadSpec::SharedPrefix(SharedPrefixParams {
        groups: 4,
        prompts_per_group: 3,
        system_tokens: 300,
        question_tokens: 50,
        output_tokens: 20,
    })
}

#[test]
fn same_seed_same_workload() {
    for kind in WorkloadKind::ALL {
        let spec = WorkloadSpec::default_for(kind);
        let a = spec.generate(60, 5).expect("valid");
        let b = spec.generate(60, 5).expect("valid");
        let c = spec.generate(60, 6).expect("valid");
        let shape = |w: &Workload| -> Vec<(usize, u32, Option<Arc<str>>, Start)> {
            w.requests
                .iter()
                .map(|r| (r.prompt.len(), r.output_tokens, r.lora.clone(), r.start))
                .collect()
        };
        assert_eq!(shape(&a), shape(&b), "{kind}");
        assert!(
            a.requests
                .iter()
                .zip(&b.requests)
                .all(|(x, y)| x.prompt == y.prompt),
            "{kind}"
        );
        assert_ne!(
            a.requests
                .iter()
                .map(|r| r.prompt.clone())
                .collect::<Vec<_>>(),
            c.requests
                .iter()
                .map(|r| r.prompt.clone())
                .collect::<Vec<_>>(),
            "{kind}: another seed, other tokens"
        );
        assert_eq!(a.requests.len(), 60, "{kind}");
        assert_eq!(a.name, kind.as_str());
        assert!(a.requests.iter().enumerate().all(|(i, r)| r.id == i as u64));
    }
}

#[test]
fn generation_is_prefix_stable() {
    for kind in WorkloadKind::ALL {
        let spec = WorkloadSpec::default_for(kind);
        let long = spec.generate(50, 2).expect("valid");
        let short = spec.generate(20, 2).expect("valid");
        let head = long.head(20);
        assert_eq!(head.open, short.open, "{kind}");
        for (a, b) in head.requests.iter().zip(&short.requests) {
            assert_eq!(
                (a.prompt.clone(), a.output_tokens, a.start),
                (b.prompt.clone(), b.output_tokens, b.start),
                "{kind}"
            );
        }
    }
}

#[test]
fn shared_prefix_requests_share_their_group_prompt() {
    let workload = generate(&small_shared_prefix(), 200);
    let mut by_prefix: HashMap<&[u32], usize> = HashMap::new();
    for request in &workload.requests {
        assert_eq!(request.prompt.len(), 350);
        assert_eq!(request.output_tokens, 20);
        *by_prefix.entry(&request.prompt[..300]).or_default() += 1;
    }
    assert_eq!(by_prefix.len(), 4, "one system prompt per group");
    let distinct: std::collections::HashSet<&[u32]> =
        workload.requests.iter().map(|r| &r.prompt[..]).collect();
    assert_eq!(distinct.len(), 12, "groups × prompts per group");
    assert_eq!(workload.open, 200);
}

#[test]
fn conversations_follow_the_azure_lengths() {
    let workload = generate(
        &WorkloadSpec::default_for(WorkloadKind::Conversations),
        4_000,
    );
    let mut inputs: Vec<usize> = workload.requests.iter().map(|r| r.prompt.len()).collect();
    inputs.sort_unstable();
    let median = inputs[inputs.len() / 2] as f64;
    assert!(
        (median / Lognormal::AZURE_INPUT.median() - 1.0).abs() < 0.1,
        "{median}"
    );
    let mut outputs: Vec<u32> = workload.requests.iter().map(|r| r.output_tokens).collect();
    outputs.sort_unstable();
    let median = f64::from(outputs[outputs.len() / 2]);
    assert!(
        (median / Lognormal::AZURE_OUTPUT.median() - 1.0).abs() < 0.1,
        "{median}"
    );
}

#[test]
fn multi_turn_prompts_extend_the_previous_turn_and_its_answer() {
    let spec = WorkloadSpec::MultiTurn(MultiTurnParams {
        turns: 3,
        system_prompts: 2,
        system_tokens: 100,
        ..MultiTurnParams::default()
    });
    let workload = generate(&spec, 10);
    assert_eq!(workload.open, 4, "3 + 3 + 3 + 1 turns");
    for request in &workload.requests {
        let Start::After { parent, think } = request.start else {
            continue;
        };
        let parent = &workload.requests[parent as usize];
        assert_eq!(parent.session, request.session);
        assert!(think > 0);
        let previous = parent.prompt.len();
        assert_eq!(&request.prompt[..previous], &parent.prompt[..]);
        let answer: Vec<u32> = (0..parent.output_tokens)
            .map(|p| output_token(workload.output_seed, parent.id, p))
            .collect();
        let end = previous + answer.len();
        assert_eq!(&request.prompt[previous..end], answer.as_slice());
        assert!(request.prompt.len() > end, "a new user turn follows");
    }
}

#[test]
fn multi_lora_is_zipf_skewed() {
    let workload = generate(&WorkloadSpec::default_for(WorkloadKind::MultiLora), 3_000);
    let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
    for request in &workload.requests {
        *counts
            .entry(request.lora.clone().expect("adapter"))
            .or_default() += 1;
    }
    let top = counts.get("adapter-001").copied().unwrap_or(0);
    let tenth = counts.get("adapter-010").copied().unwrap_or(0);
    assert!(top > 5 * tenth.max(1), "{top} vs {tenth}");
    assert_eq!(workload.cluster.max_loras, 4);
}

#[test]
fn heterogeneous_and_bursts_shape_the_cluster_and_arrivals() {
    let workload = generate(&WorkloadSpec::default_for(WorkloadKind::Heterogeneous), 10);
    assert_eq!(workload.cluster.slow, vec![(0, 2.0)]);
    let bursts = generate(&WorkloadSpec::default_for(WorkloadKind::Bursts), 10);
    assert!(matches!(bursts.arrivals, ArrivalProcess::OnOff { .. }));
    assert_eq!(bursts.arrival_times(10.0, 1).len(), 10);
}

#[test]
fn trace_groups_share_leading_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.csv");
    std::fs::write(
        &path,
        "0.0,500,10,1\n0.5,400,10,1\n1.0,300,10\n2.0,600,5,2\n",
    )
    .expect("write");
    let spec = WorkloadSpec::Trace(TraceParams {
        path,
        prefix_tokens: 256,
    });
    let workload = generate(&spec, 0);
    assert_eq!(workload.name, "trace:trace.csv");
    let prompts: Vec<&[u32]> = workload.requests.iter().map(|r| &r.prompt[..]).collect();
    assert_eq!(prompts[0].len(), 500);
    assert_eq!(prompts[0][..256], prompts[1][..256]);
    assert_ne!(prompts[0][256], prompts[1][256]);
    assert_ne!(prompts[0][..256], prompts[3][..256], "another group");
    assert_eq!(
        workload.arrival_times(1.5, 0),
        vec![0, 500_000, 1_000_000, 2_000_000]
    );
    assert_eq!(
        spec.generate(2, 0).expect("trace").requests.len(),
        2,
        "limit"
    );
}

#[test]
fn bad_parameters_name_the_field() {
    let spec = WorkloadSpec::SharedPrefix(SharedPrefixParams {
        groups: 0,
        ..SharedPrefixParams::default()
    });
    let err = spec.generate(10, 0).unwrap_err().to_string();
    assert!(err.contains("shared_prefix.groups"), "{err}");
    let spec = WorkloadSpec::Conversations(LengthParams {
        input: Lognormal {
            min: 10,
            max: 5,
            ..Lognormal::AZURE_INPUT
        },
        ..LengthParams::default()
    });
    let err = spec.generate(10, 0).unwrap_err().to_string();
    assert!(err.contains("input"), "{err}");
    let spec = WorkloadSpec::Bursts(BurstParams {
        on_s: 0.0,
        ..BurstParams::default()
    });
    assert!(
        spec.generate(10, 0)
            .unwrap_err()
            .to_string()
            .contains("on_s")
    );
    let err = WorkloadSpec::default_for(WorkloadKind::Conversations)
        .generate(0, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("requests"), "{err}");
}
