defmodule Yggdrasil.Registration do
  @moduledoc false
  # The registration part shared by `use Yggdrasil.Backend`,
  # `use Yggdrasil.Transformer` and `use Yggdrasil.Adapter`: a child spec like
  # `use Task, restart: :transient` gives, `start_link/1` and `register/0`.
  #
  # Improved over Yggdrasil 6: `start_link/1` registers before it returns, so
  # the children after it in a supervisor already find the alias (the
  # original registered from an asynchronous Task).

  defmacro __using__(register: {function, name}) do
    quote do
      use Task, restart: :transient

      @doc "Registers the alias, then starts a short-lived task (supervisor compatible)."
      @spec start_link(term()) :: {:ok, pid()} | {:error, term()}
      def start_link(_) do
        case register() do
          :ok -> Task.start_link(fn -> :ok end)
          {:error, reason} -> {:error, reason}
        end
      end

      @doc "Registers `#{inspect(unquote(name))}` as an alias of this module."
      @spec register() :: :ok | {:error, term()}
      def register, do: apply(Yggdrasil.Registry, unquote(function), [unquote(name), __MODULE__])

      defoverridable start_link: 1, register: 0
    end
  end

  @doc false
  # The `:name` option every `use` needs.
  def fetch_name!(options, kind) do
    case Keyword.fetch(options, :name) do
      {:ok, name} when is_atom(name) and not is_nil(name) ->
        name

      _ ->
        raise ArgumentError, "use #{kind} needs a `name: atom` option, got: #{inspect(options)}"
    end
  end
end
