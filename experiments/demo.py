"""A tour of what r1jax has today: tasks, worked solutions, tokenizer, rewards, GRPO advantages.

    python experiments/demo.py [--num 64] [--error-rate 0.3] [--workdir /tmp/r1jax_demo]

Generates Countdown and arithmetic problems, writes worked chain-of-thought
solutions (some with slips, some with "wait, let me recheck"), trains a
lossless SentencePiece tokenizer on them, scores the solutions with the R1
rule-based rewards in a process pool, and turns each group's rewards into GRPO
advantages. Runs in well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

from r1jax.cli import run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=64, help="problems per task")
    p.add_argument("--group", type=int, default=4, help="solutions per problem (the GRPO group)")
    p.add_argument("--error-rate", type=float, default=0.3)
    p.add_argument("--recheck-rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join("workdir", "demo"))
    args = p.parse_args(argv)

    import jax.numpy as jnp

    from r1jax import data, rewards
    from r1jax.rl.grpo import group_advantages
    from r1jax.tokenizer import Tokenizer

    t0 = time.time()
    problems = (data.generate_arithmetic(data.ArithmeticConfig(), "train", args.num, seed=args.seed)
                + data.generate_countdown(data.CountdownConfig(), "train", args.num, seed=args.seed))
    rng = random.Random(args.seed)
    prompts, completions, rows = [], [], []
    for prob in problems:
        for _ in range(args.group):
            sol = data.worked_solution(prob, rng, error_rate=args.error_rate, self_correct_rate=args.recheck_rate)
            text = sol.render()
            if rng.random() < 0.1:  # some completions forget the answer tags
                text = text.replace("<answer>", "").replace("</answer>", "")
            prompts.append(data.R1_ZERO.render(prob.question))
            completions.append(text)
            rows.append(prob)
    print(f"{len(problems)} problems, {len(completions)} worked solutions ({time.time() - t0:.1f}s)")
    print("\nexample prompt + completion:\n" + prompts[0] + completions[0] + "\n")

    tok = Tokenizer.train(iter(p + c for p, c in zip(prompts, completions)), vocab_size=512)
    path = os.path.join(args.workdir, "tokenizer.model")
    tok.save(path)
    lengths = [len(tok.encode(c)) for c in completions]
    lossless = all(tok.decode(tok.encode(c)) == c for c in completions)
    print(f"tokenizer: vocab {tok.vocab_size}, saved to {path}; completion tokens mean {np.mean(lengths):.0f}, "
          f"max {max(lengths)}; lossless round trip: {lossless}")

    is_countdown = [r.task == "countdown" for r in rows]
    answer_fn = lambda ps, cs, **cols: [  # noqa: E731  route each row to its task's accuracy rule
        rewards.countdown_reward([p], [c], numbers=[n], target=[t], format_score=0.0)[0] if cd
        else rewards.accuracy_reward([p], [c], answer=[a])[0]
        for p, c, cd, a, n, t in zip(ps, cs, cols["is_countdown"], cols["answer"], cols["numbers"], cols["target"])]
    table = {"accuracy": rewards.WeightedReward(answer_fn, 1.0),
             "format": rewards.WeightedReward(rewards.format_reward, 1.0),
             "language": rewards.WeightedReward(rewards.language_reward, 0.0)}
    t1 = time.time()
    with rewards.RewardPool(num_workers=2, timeout_s=10.0) as pool:
        scored = rewards.combine_rewards(
            prompts, completions, table, pool=pool, answer=[r.answer for r in rows],
            numbers=[list(r.numbers) for r in rows], target=[r.target or 0 for r in rows],
            is_countdown=is_countdown)
    print(f"scored {len(completions)} completions in a 2-process pool in {time.time() - t1:.1f}s")

    total = np.asarray(scored.total)
    print(f"\n{'task':<11} {'accuracy':>8} {'format':>7} {'english':>7}")
    for task in ("arithmetic", "countdown"):
        sel = [i for i, r in enumerate(rows) if r.task == task]
        print(f"{task:<11} {np.mean([scored.values['accuracy'][i] for i in sel]):8.2f} "
              f"{np.mean([scored.values['format'][i] for i in sel]):7.2f} "
              f"{np.mean([scored.values['language'][i] for i in sel]):7.2f}")
    print(f"errors per reward: {scored.errors}; timeouts: {scored.timeouts}")

    adv = np.asarray(group_advantages(jnp.asarray(total.reshape(-1, args.group))))
    print("\nGRPO advantages of the first 3 groups (rewards -> advantages):")
    for g in range(3):
        print("  ", np.round(total.reshape(-1, args.group)[g], 2), "->", np.round(adv[g], 2))
    print(f"\ndone in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
