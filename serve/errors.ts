/**
 * The base of the server's error classes: an `Error` whose `name` is its class's name, so logs
 * and worker frames name the kind of failure.
 *
 * @module
 */

/** An error named after its class (`new OverloadedError(...).name === "OverloadedError"`). */
export class NamedError extends Error {
  /** Creates the error; `name` is the name of the class constructed. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}
