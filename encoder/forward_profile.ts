/**
 * Where an encoder forward pass spends its time: {@linkcode ForwardProfile} sums wall-clock
 * milliseconds per phase over the passes given it (`encoder.forward(input, { profile })`).
 *
 * ```ts
 * import { ForwardProfile } from "./forward_profile.ts";
 * const profile = new ForwardProfile();
 * // encoder.forward(input, { profile }); ... repeated
 * for (const [phase, ms] of Object.entries(profile.meanMs())) console.log(phase, ms);
 * ```
 *
 * The clock is read between phases only (one `performance.now()` per phase and layer), so a
 * profiled pass runs the same kernels in the same order as an unprofiled one.
 *
 * @module
 */

/** The phases of a BERT forward pass, in order. */
export const FORWARD_PHASES = [
  "embeddings",
  "qkv",
  "attention",
  "attention-output",
  "attention-norm",
  "intermediate",
  "output",
  "feed-forward-fused",
  "output-norm",
] as const;

/**
 * One phase: the embeddings (lookup + LayerNorm); the Q/K/V projections (fused or three);
 * the attention kernel (scores, softmax, context); the attention output projection (with its
 * residual); its LayerNorm; the feed-forward intermediate (GELU fused) and output (residual
 * fused) projections, or both as `feed-forward-fused` when the first hands the second its
 * quantized activations directly; the output LayerNorm.
 */
export type ForwardPhase = typeof FORWARD_PHASES[number];

/** Milliseconds per phase, summed over profiled forward passes. */
export class ForwardProfile {
  /** Summed milliseconds per phase. */
  readonly ms: Record<ForwardPhase, number> = Object.fromEntries(
    FORWARD_PHASES.map((p) => [p, 0]),
  ) as Record<ForwardPhase, number>;
  /** Profiled forward passes. */
  passes = 0;

  /** Mean milliseconds per pass of each phase that took any time. */
  meanMs(): Partial<Record<ForwardPhase, number>> {
    const out: Partial<Record<ForwardPhase, number>> = {};
    if (this.passes === 0) return out;
    for (const phase of FORWARD_PHASES) {
      if (this.ms[phase] > 0) out[phase] = this.ms[phase] / this.passes;
    }
    return out;
  }

  /** Mean milliseconds per pass over all phases. */
  totalMs(): number {
    if (this.passes === 0) return 0;
    return FORWARD_PHASES.reduce((sum, p) => sum + this.ms[p], 0) / this.passes;
  }

  /** Clears the sums. */
  reset(): void {
    for (const phase of FORWARD_PHASES) this.ms[phase] = 0;
    this.passes = 0;
  }
}

/** Adds the time since the last lap to a phase; a no-op without a profile. */
export interface PhaseClock {
  /** Charges the time since the previous lap (or the clock's start) to `phase`. */
  lap(phase: ForwardPhase): void;
  /** Ends a pass (counts it). */
  end(): void;
}

const NO_CLOCK: PhaseClock = { lap: () => {}, end: () => {} };

/** A clock for one pass charging `profile`, or a no-op one when `profile` is undefined. */
export function phaseClock(profile: ForwardProfile | undefined): PhaseClock {
  if (profile === undefined) return NO_CLOCK;
  let last = performance.now();
  return {
    lap(phase) {
      const now = performance.now();
      profile.ms[phase] += now - last;
      last = now;
    },
    end() {
      profile.passes++;
    },
  };
}
