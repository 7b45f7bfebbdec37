/// What a progress or token callback asks for: go on, or stop the work
/// (training stops after a consistent step and throws `LoRAError.aborted`;
/// generation returns with `StopReason.callback`).
public enum CallbackAction: Sendable, Equatable {
    case `continue`
    case stop
}
