"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class VidccError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = 2


class ModelError(VidccError):
    """The model file or graph is malformed."""


class VerifyError(ModelError):
    """The IR broke one of verify()'s rules; the message names the node and the rule."""


class SpecError(VidccError):
    """A pipeline spec or pass option is invalid."""


class PluginError(VidccError):
    """A plugin failed to load, registered a duplicate name, or broke the graph."""


class PassError(VidccError):
    """A pass raised or left an invalid graph; the graph was rolled back."""

    def __init__(self, message, *, pass_name=None, plugin=None, node=None):
        super().__init__(message)
        self.pass_name, self.plugin, self.node = pass_name, plugin, node


class TargetError(VidccError):
    """A target is unknown, unavailable or failed to build or run."""


class VerificationFailed(VidccError):
    """Numerical verification against the reference missed its gate."""

    exit_code = 3
