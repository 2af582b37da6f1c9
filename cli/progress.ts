import cliProgress from 'cli-progress'

/**
 * The progress bar of `migrate` and `run` on a terminal: targets done of the
 * total, failures so far, and the target running longest (the one holding up
 * the end). Off the terminal it does nothing, so the JSON document is alone on
 * stdout.
 */
export class Progress {
  readonly #enabled: boolean
  readonly #unit: string
  #bar: cliProgress.SingleBar | undefined
  readonly #running = new Map<string, number>()
  #failed = 0
  #done = 0
  #timer: NodeJS.Timeout | undefined

  constructor (enabled: boolean, unit: string) {
    this.#enabled = enabled
    this.#unit = unit
  }

  /** Draws the bar, once the total is known. */
  begin (total: number): void {
    if (!this.#enabled || this.#bar !== undefined) return
    const unit = this.#unit
    this.#bar = new cliProgress.SingleBar({
      format: `{bar} {value}/{total} ${unit} | {failed} failed | slowest: {slowest}`,
      stream: process.stdout,
      hideCursor: true,
      clearOnComplete: false,
      barsize: 30,
      fps: 10,
    }, cliProgress.Presets.shades_classic)
    this.#bar.start(total, 0, { failed: 0, slowest: '-' })
    // The slowest running target changes with time alone, between events.
    this.#timer = setInterval(() => { this.#redraw() }, 500)
    this.#timer.unref()
  }

  /** `target` started, one of `total`. */
  start (target: string, total: number): void {
    this.begin(total)
    this.#running.set(target, Date.now())
    this.#redraw()
  }

  /** `target` ended, failed or not. */
  end (target: string, failed: boolean): void {
    this.#running.delete(target)
    this.#done++
    if (failed) this.#failed++
    this.#redraw()
  }

  /** Draws the last state and leaves the bar on the screen. */
  stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    if (this.#bar === undefined) return
    this.#redraw()
    this.#bar.stop()
  }

  #redraw (): void {
    if (this.#bar === undefined) return
    let slowest = '-'
    let since = Infinity
    for (const [target, started] of this.#running) {
      if (started < since) {
        since = started
        slowest = `${target} (${((Date.now() - started) / 1000).toFixed(1)} s)`
      }
    }
    this.#bar.update(this.#done, { failed: this.#failed, slowest })
  }
}

/**
 * Ctrl-C during a run: the first one aborts `controller` (no new target
 * starts; running ones finish their current step), a second one exits at once.
 */
export function interruptible (controller: AbortController, onFirst: () => void): () => void {
  const handler = (): void => {
    if (controller.signal.aborted) process.exit(130)
    onFirst()
    controller.abort()
  }
  process.on('SIGINT', handler)
  return () => { process.off('SIGINT', handler) }
}
