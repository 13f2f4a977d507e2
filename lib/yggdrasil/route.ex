defmodule Yggdrasil.Route do
  @moduledoc """
  What serves a channel: its transformer and backend (aliases and modules),
  its adapter's subscriber and publisher modules, and the adapter's two
  capabilities (see `Yggdrasil.Adapter`):

  - `delivery`: `:process` when one subscriber adapter process per channel
    hands events over (the Yggdrasil 6 shape), `:engine` when no process
    runs and publishes go straight to the engine.
  - `publish`: `:pool` when `Yggdrasil.publish/3` goes through the pooled
    publisher processes, `:caller` when it calls the publisher module's
    `publish_in_caller/4` in the publishing process.

  - `direct`: `true` when the transformer is the identity
    (`Yggdrasil.Transformer.Default`) and the backend the engine's own
    (`Yggdrasil.Backend.Default`): publishing then skips both transformer
    calls and goes straight to the engine, with the same result.

  - `publish_in_caller`: for a `:caller` adapter, its publisher module's
    `publish_in_caller/4` captured as a function (calling a module held in
    a variable looks the function up on every call).

  Routes are built once per adapter, transformer and backend and cached
  (`Yggdrasil.Registry`), so the publish path reads them instead of looking
  each module up. A `:caller` publisher gets the route of the channel it
  publishes on.
  """

  @enforce_keys [:transformer, :backend, :transformer_module, :backend_module]
  defstruct [
    :transformer,
    :backend,
    :transformer_module,
    :backend_module,
    :subscriber_module,
    :publisher_module,
    :publish_in_caller,
    delivery: :process,
    publish: :pool,
    direct: false
  ]

  @typedoc "How an adapter's events reach subscribers."
  @type delivery :: :engine | :process

  @typedoc "How `Yggdrasil.publish/3` reaches an adapter's publisher."
  @type publish :: :pool | :caller

  @typedoc "The modules and capabilities that serve a channel."
  @type t :: %__MODULE__{
          transformer: atom(),
          backend: atom(),
          transformer_module: module(),
          backend_module: module(),
          subscriber_module: module() | nil,
          publisher_module: module() | nil,
          publish_in_caller: (Yggdrasil.Channel.t(), t(), term(), keyword() -> term()) | nil,
          delivery: delivery(),
          publish: publish(),
          direct: boolean()
        }

  @doc false
  # Completes a route built from its modules and capabilities: the fields
  # that follow from the others, decided once.
  @spec complete(t()) :: t()
  def complete(%__MODULE__{publish: publish, publisher_module: publisher} = route) do
    caller = if publish == :caller, do: Function.capture(publisher, :publish_in_caller, 4)
    %__MODULE__{route | direct: direct?(route), publish_in_caller: caller}
  end

  # Whether `route` may be `direct` (see the moduledoc); decided once, when
  # the route is built.
  defp direct?(%__MODULE__{
         transformer_module: Yggdrasil.Transformer.Default,
         backend_module: Yggdrasil.Backend.Default
       }),
       do: true

  defp direct?(%__MODULE__{}), do: false
end
